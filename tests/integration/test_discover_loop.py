"""Discovery on real loop devices with real partition tables and filesystems.

Loop devices are the sources on this host, so they are offered only with
include_loop=True. The host kernel parses no partition tables itself: after
losetup, `partx` tells it about the partitions (parted may already have).
"""

import os
import subprocess

import pytest

from agent.source.discover import populate
from agent.source.discover.model import Filesystem, Partition, PartitionTable
from agent.runcmd import run
from tests.testbed.loop import attached as loop
from tests.conftest import sha256_of as sha256

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices"),
]

MiB = 1024 * 1024
GPT_UUIDS = {
    "efi": "C0DE-0001",
    "root": "0c0d0c0d-1111-4222-8333-000000000001",
    "data": "0c0d0c0d-1111-4222-8333-000000000002",
    "swap": "0c0d0c0d-1111-4222-8333-000000000003",
}
MBR_UUIDS = {
    "boot": "0c0d0c0d-2222-4222-8333-000000000001",
    "swap": "0c0d0c0d-2222-4222-8333-000000000002",
    "vfat": "C0DE-0002",
}





def part(dev, n):
    return f"{dev}p{n}"


def parted(image, *script):
    run(["parted", "-s", "-a", "optimal", str(image), "unit", "MiB", *script], timeout=60)


def find_disk(inv, dev):
    disk = inv.disk(dev)
    assert disk is not None, f"{dev} not discovered: {[d.name for d in inv.disks]}"
    return disk


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory):
    image = tmp_path_factory.mktemp("gpt") / "gpt.img"
    with open(image, "wb") as f:
        f.truncate(400 * MiB)
    parted(image, "mklabel", "gpt",
           "mkpart", '"EFI System"', "fat32", "1", "33",
           "set", "1", "esp", "on",
           "mkpart", "root", "ext4", "33", "65",
           "mkpart", "data", "xfs", "65", "375",
           "mkpart", "swap", "linux-swap", "375", "399")
    with loop(image) as dev:
        run(["mkfs.vfat", "-F", "32", "-n", "EFI", "-i", GPT_UUIDS["efi"].replace("-", ""),
             part(dev, 1)], timeout=60)
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", GPT_UUIDS["root"], part(dev, 2)],
            timeout=60)
        run(["mkfs.xfs", "-q", "-f", "-L", "data", "-m", f"uuid={GPT_UUIDS['data']}",
             part(dev, 3)], timeout=60)
        run(["mkswap", "-L", "swap", "-U", GPT_UUIDS["swap"], part(dev, 4)], timeout=60)
    return image


@pytest.fixture(scope="module")
def mbr_image(tmp_path_factory):
    image = tmp_path_factory.mktemp("mbr") / "mbr.img"
    with open(image, "wb") as f:
        f.truncate(96 * MiB)
    parted(image, "mklabel", "msdos",
           "mkpart", "primary", "ext4", "1", "33",
           "set", "1", "boot", "on",
           "mkpart", "extended", "33", "95",
           "mkpart", "logical", "linux-swap", "34", "50",
           "mkpart", "logical", "fat32", "51", "95")
    with loop(image) as dev:
        run(["mkfs.ext4", "-q", "-F", "-L", "boot", "-U", MBR_UUIDS["boot"], part(dev, 1)],
            timeout=60)
        run(["mkswap", "-L", "swap", "-U", MBR_UUIDS["swap"], part(dev, 5)], timeout=60)
        run(["mkfs.vfat", "-F", "16", "-n", "DATA", "-i", MBR_UUIDS["vfat"].replace("-", ""),
             part(dev, 6)], timeout=60)
    return image


def disk_id(image):
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "PTUUID", str(image)],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out


def test_gpt_loop_device_reported_exactly(gpt_image):
    before = sha256(gpt_image)
    with loop(gpt_image, read_only=True) as dev:
        inv = populate.discover(include_loop=True)
        disk = find_disk(inv, dev)
        ptuuid = disk_id(gpt_image)
        partuuids = {n: subprocess.run(["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID",
                                        part(dev, n)], capture_output=True, text=True
                                       ).stdout.strip() for n in (1, 2, 3, 4)}
    assert sha256(gpt_image) == before
    assert (disk.kind, disk.transport, disk.size, disk.read_only) == (
        "loop", "unknown", 400 * MiB, True)
    assert (disk.capture_default, disk.exclude_reason) == (True, None)
    assert disk.notes == [f"backing file {gpt_image}"]
    assert disk.filesystem is None
    linux = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    assert disk.partition_table == PartitionTable(
        type="gpt", uuid=ptuuid, source="parted", partitions=[
            Partition(1, part(dev, 1), 1 * MiB, 32 * MiB, "primary",
                      "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", ["boot", "esp"], "EFI System",
                      partuuids[1], Filesystem("vfat", "EFI", GPT_UUIDS["efi"])),
            Partition(2, part(dev, 2), 33 * MiB, 32 * MiB, "primary", linux, [], "root",
                      partuuids[2], Filesystem("ext4", "root", GPT_UUIDS["root"])),
            Partition(3, part(dev, 3), 65 * MiB, 310 * MiB, "primary", linux, [], "data",
                      partuuids[3], Filesystem("xfs", "data", GPT_UUIDS["data"])),
            Partition(4, part(dev, 4), 375 * MiB, 24 * MiB, "primary",
                      "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", ["swap"], "swap",
                      partuuids[4], Filesystem("swap", "swap", GPT_UUIDS["swap"])),
        ])


def test_mbr_loop_device_reported_exactly(mbr_image):
    before = sha256(mbr_image)
    with loop(mbr_image, read_only=True) as dev:
        inv = populate.discover(include_loop=True)
        disk = find_disk(inv, dev)
        ptuuid = disk_id(mbr_image)
    assert sha256(mbr_image) == before
    assert disk.size == 96 * MiB
    t = disk.partition_table
    assert (t.type, t.uuid, t.source) == ("msdos", ptuuid, "parted")
    assert [(p.number, p.dev_path, p.start, p.size, p.type, p.flags, p.name, p.uuid,
             p.filesystem) for p in t.partitions] == [
        (1, part(dev, 1), 1 * MiB, 32 * MiB, "primary", ["boot"], None, f"{ptuuid}-01",
         Filesystem("ext4", "boot", MBR_UUIDS["boot"])),
        (2, part(dev, 2), 33 * MiB, 62 * MiB, "extended", ["lba"], None, f"{ptuuid}-02", None),
        (5, part(dev, 5), 34 * MiB, 16 * MiB, "logical", ["swap"], None, f"{ptuuid}-05",
         Filesystem("swap", "swap", MBR_UUIDS["swap"])),
        (6, part(dev, 6), 51 * MiB, 44 * MiB, "logical", ["lba"], None, f"{ptuuid}-06",
         Filesystem("vfat", "DATA", MBR_UUIDS["vfat"])),
    ]
    assert [p.type_id for p in t.partitions] == ["0x83", "0xf", "0x82", "0xc"]


def test_loop_excluded_without_include_loop(mbr_image):
    with loop(mbr_image, read_only=True) as dev:
        disk = find_disk(populate.discover(), dev)
    assert (disk.capture_default, disk.exclude_reason) == (
        False, "loop device (use --include-loop to offer it)")


def test_loop_as_capture_target_and_as_boot_device(mbr_image):
    with loop(mbr_image, read_only=True) as dev:
        as_target = find_disk(populate.discover(include_loop=True, target=part(dev, 1)), dev)
        as_boot = populate.discover(include_loop=True, boot_device=dev)
    assert as_target.exclude_reason == "capture target"
    assert as_boot.live_medium == dev.removeprefix("/dev/")
    assert find_disk(as_boot, dev).exclude_reason == "the live system booted from it"


def test_cli_json_and_table(mbr_image, capsys):
    import json

    from agent.source.commands.discover import main

    with loop(mbr_image, read_only=True) as dev:
        assert main(["--json", "--include-loop"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert main(["--include-loop"]) == 0
        table = capsys.readouterr().out
    mine = next(d for d in doc["disks"] if d["dev_path"] == dev)
    assert mine["partition_table"]["partitions"][0]["filesystem"] == {
        "type": "ext4", "label": "boot", "uuid": MBR_UUIDS["boot"]}
    assert dev.removeprefix("/dev/") in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_grown_gpt_disk_is_read_not_fixed(tmp_path):
    """A GPT whose backup header is not at the end (the disk grew): libparted
    offers to fix it, which would write; discovery must only read."""
    image = tmp_path / "grown.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    parted(image, "mklabel", "gpt", "mkpart", "one", "ext4", "1", "15")
    with open(image, "r+b") as f:
        f.truncate(48 * MiB)
    before = sha256(image)
    with loop(image) as dev:       # read-write on purpose: a fix would land on disk
        disk = find_disk(populate.discover(include_loop=True), dev)
    assert sha256(image) == before
    assert [(p.number, p.start, p.size, p.name) for p in disk.partition_table.partitions] == [
        (1, 1 * MiB, 14 * MiB, "one")]


def test_partition_table_of_a_device_that_changed_size(tmp_path):
    """The same path read again after its device changed size (a loop device reused; a LUN
    grown; a disk swapped): libparted must not use the size it cached (it crashed the process
    reading a GPT backup header past the stale end)."""
    from agent.source.discover.probe import read_partition_table

    images = []
    for mb, end in ((400, 100), (448, 300)):
        img = str(tmp_path / f"d{mb}.img")
        with open(img, "wb") as f:
            f.truncate(mb * MiB)
        run(["parted", "-s", img, "mklabel", "gpt", "mkpart", "a", "1MiB", f"{end}MiB"])
        images.append((img, end))
    for img, end in images + images[:1]:
        with loop(img) as dev:
            table = read_partition_table(dev)
            assert table.type == "gpt" and [p.size for p in table.partitions] == [(end - 1) * MiB]
