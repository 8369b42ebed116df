"""The `coldclone SUBCOMMAND` front ends that own their flags (agent/cli.py dispatches)."""
