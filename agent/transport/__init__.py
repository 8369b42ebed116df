"""coldclone transport."""
