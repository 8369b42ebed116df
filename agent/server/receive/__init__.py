"""coldclone receive."""
