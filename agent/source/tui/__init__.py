"""coldclone tui."""
