"""coldclone inspect."""
