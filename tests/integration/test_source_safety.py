"""Nothing coldclone does writes to a source (issue 13): inspection of crashed filesystems
leaves every byte as it was, and a source in use for writing is refused by name."""

import os
import subprocess
import sys

import pytest

from agent.capture.guard import get_ro
from tests.conftest import coldclone, sha256_of
from tests.testbed import dirtyfs

pytestmark = pytest.mark.root


def inspect_cli(dev):
    return coldclone("discover", "--include-loop", "--inspect", "--disks", os.path.basename(dev),
                     timeout=300)


def test_inspecting_ext4_with_orphan_list_changes_nothing(tmp_path):
    """The issue's recipe: orphan cleanup on a read-only mount of a writable device wrote 432
    bytes of the source. With the disk read-only in the kernel first, nothing changes."""
    with dirtyfs.orphan_ext4(str(tmp_path / "orphan.img")) as loop:
        part = loop.parts[0]
        assert dirtyfs.ext4_needs_recovery(part)
        disk_before, part_before = sha256_of(loop.dev), sha256_of(part)
        r = inspect_cli(loop.dev)
        assert r.returncode == 0, r.stderr
        # it was really inspected: the report comes from the filesystem's /etc/fstab
        assert "fstab-device-names" in r.stdout, r.stdout
        assert sha256_of(part) == part_before
        assert sha256_of(loop.dev) == disk_before
        assert dirtyfs.ext4_needs_recovery(part)
        # and the guard gave the devices back as they were
        assert not get_ro(loop.dev) and not get_ro(part)


def test_inspecting_xfs_with_dirty_log_changes_nothing(tmp_path):
    with dirtyfs.dirty_xfs(str(tmp_path / "dirty.img")) as loop:
        part = loop.parts[0]
        assert dirtyfs.xfs_log_is_dirty(part)
        disk_before, part_before = sha256_of(loop.dev), sha256_of(part)
        r = inspect_cli(loop.dev)
        assert r.returncode == 0, r.stderr
        assert "fstab-device-names" in r.stdout, r.stdout
        assert sha256_of(part) == part_before
        assert sha256_of(loop.dev) == disk_before
        assert dirtyfs.xfs_log_is_dirty(part)
        assert not get_ro(loop.dev) and not get_ro(part)
