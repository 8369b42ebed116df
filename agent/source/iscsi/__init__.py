"""coldclone iscsi."""
