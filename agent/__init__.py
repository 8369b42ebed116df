"""coldclone: capture the disks of a physical server into verified qcow2 images."""

__version__ = "0.1.0"
