"""One module per screen of the operator's flow (docs/tui.md)."""
