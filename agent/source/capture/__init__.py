"""coldclone capture."""
