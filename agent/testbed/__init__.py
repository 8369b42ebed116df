"""coldclone testbed."""
