"""Pure parts of the source-safety guard: the device tree from sysfs, and the in-use scan's
parsers fed with recorded /proc text."""

import os

import pytest

from agent import records
from agent.source.capture import inuse
from agent.source.capture.guard import GuardRecord, Owner, tree_names
from agent.source.capture.inuse import InUse, Use

# Recorded from a live system (Debian 12), one container's namespace included: spaces in a
# path are octal-escaped by the kernel.
MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
25 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
61 22 8:17 / /mnt/data\\040disk rw,noatime shared:30 - xfs /dev/sdb1 rw,attr2,inode64
62 22 8:18 / /mnt/old ro,relatime shared:31 - ext4 /dev/sdb2 ro
63 22 8:19 / /mnt/bind-ro ro,relatime shared:32 - ext4 /dev/sdb3 rw
64 22 0:45 / /srv btrfs rw,relatime shared:33 - btrfs /dev/sdc1 rw,space_cache=v2
garbage line that is not mountinfo
"""


def test_parse_mountinfo():
    entries = inuse.parse_mountinfo(MOUNTINFO)
    assert len(entries) == 6
    data = entries[2]
    assert (data.major, data.minor, data.mountpoint, data.fstype, data.source) == (
        8, 17, "/mnt/data disk", "xfs", "/dev/sdb1")
    assert data.writable
    assert not entries[3].writable                  # ro mount of a ro superblock
    # A read-only bind of a filesystem whose superblock is read-write: the kernel may still
    # write the device (journal, orphan cleanup), so it counts as writable.
    assert entries[4].writable and not entries[4].mount_rw
    assert entries[5].source == "/dev/sdc1" and (entries[5].major, entries[5].minor) == (0, 45)


@pytest.mark.parametrize("flags,write", [
    ("0100000", False),       # O_RDONLY|O_LARGEFILE
    ("02100001", True),       # O_WRONLY|O_CLOEXEC|O_LARGEFILE
    ("0100002", True),        # O_RDWR|O_LARGEFILE
    ("02004000", False),      # O_RDONLY|O_NONBLOCK|O_CLOEXEC
])
def test_fdinfo_flags(flags, write):
    text = f"pos:\t0\nflags:\t{flags}\nmnt_id:\t25\nino:\t1042\n"
    assert inuse.opened_for_write(inuse.parse_fdinfo_flags(text)) is write


def test_parse_swaps():
    text = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
            "/dev/sda2                               partition\t8388604\t\t0\t\t-2\n"
            "/swap\\040file                          file\t\t1048572\t\t0\t\t-3\n")
    assert inuse.parse_swaps(text) == ["/dev/sda2", "/swap file"]
    assert inuse.parse_swaps("Filename Type Size Used Priority\n") == []


def test_fdinfo_without_flags_is_an_error():
    with pytest.raises(ValueError):
        inuse.parse_fdinfo_flags("pos:\t0\n")


def test_refusal_names_mount_process_and_what_to_do():
    err = inuse.SourceInUseError([
        InUse(Use.MOUNTED_RW, "/dev/sdb1", mountpoint="/mnt/data", ns_pid=0),
        InUse(Use.MOUNTED_RW, "/dev/sdb2", mountpoint="/var/lib/x", ns_pid=4242),
        InUse(Use.OPEN_FOR_WRITE, "/dev/sdb", pid=777, comm="dd"),
        InUse(Use.SWAP, "/dev/sdb5"),
    ], "capture /dev/sdb")
    text = str(err)
    assert text.startswith("refusing to capture /dev/sdb: ")
    assert "/dev/sdb1 is mounted read-write at /mnt/data: unmount it (umount /mnt/data)" in text
    assert "/dev/sdb2 is mounted read-write at /var/lib/x in the mount namespace of pid 4242" in text
    assert "/dev/sdb is open for writing by pid 777 (dd): stop that process (kill 777)" in text
    assert "/dev/sdb5 is in use as swap: turn it off (swapoff /dev/sdb5)" in text
    assert "--allow-mounted-source" in text and "coldclone.allow_mounted=1" in text
    assert err.exit_code == 4


def _fake_sysfs(root):
    """sda with sda1, sda2; sda2 is a member of md127, which holds dm-0 (LVM on RAID)."""
    block = root / "devices" / "block"
    for part in ("sda1", "sda2"):
        (block / "sda" / part).mkdir(parents=True)
        (block / "sda" / part / "partition").write_text("1\n")
        (block / "sda" / part / "holders").mkdir()
    (block / "sda" / "holders").mkdir()
    (block / "md127" / "holders").mkdir(parents=True)
    (block / "dm-0" / "holders").mkdir(parents=True)
    os.symlink("../../../md127", block / "sda" / "sda2" / "holders" / "md127")
    os.symlink("../../dm-0", block / "md127" / "holders" / "dm-0")
    (block / "md127" / "slaves").mkdir()
    os.symlink("../../sda/sda2", block / "md127" / "slaves" / "sda2")
    (block / "dm-0" / "slaves").mkdir()
    os.symlink("../../md127", block / "dm-0" / "slaves" / "md127")
    cls = root / "class" / "block"
    cls.mkdir(parents=True)
    for name, target in (("sda", block / "sda"), ("sda1", block / "sda" / "sda1"),
                         ("sda2", block / "sda" / "sda2"), ("md127", block / "md127"),
                         ("dm-0", block / "dm-0")):
        os.symlink(target, cls / name)
    return str(cls)


def test_tree_of_a_disk_has_partitions_and_holders(tmp_path):
    sysfs = _fake_sysfs(tmp_path)
    assert tree_names(["sda"], sysfs) == ["sda", "sda1", "sda2", "md127", "dm-0"]


def test_tree_of_a_partition_is_its_whole_disk(tmp_path):
    """A write to the disk reaches the partition's bytes: guarding a partition guards it all."""
    sysfs = _fake_sysfs(tmp_path)
    assert tree_names(["sda1"], sysfs) == ["sda", "sda1", "sda2", "md127", "dm-0"]


def test_tree_of_a_holder_reaches_down_to_its_disks(tmp_path):
    """Capturing md127 while its member disk is written directly would change the array."""
    sysfs = _fake_sysfs(tmp_path)
    assert set(tree_names(["dm-0"], sysfs)) == {"sda", "sda1", "sda2", "md127", "dm-0"}
    assert tree_names(["md127"], sysfs)[:2] == ["md127", "dm-0"]


def test_guard_record_round_trip():
    rec = GuardRecord("/dev/sdb", "8:16", False, [Owner(10, 123), Owner(10, 123), Owner(11, 5)])
    assert records.loads(records.dumps(rec), GuardRecord, "guard record") == rec
    with pytest.raises(ValueError, match=r"guard record: Expected bool, got str - at \$\.was_ro"):
        records.loads('{"dev": "/dev/sdb", "devno": "8:16", "was_ro": "no"}', GuardRecord, "guard record")


def test_owner_liveness():
    assert Owner.me().alive()
    assert not Owner(os.getpid(), Owner.me().start + 1).alive()   # a reused pid is not us
