"""coldclone estimate."""
