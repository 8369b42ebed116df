"""coldclone discover."""
