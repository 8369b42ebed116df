"""A RHEL 6 style source OS on a real loop device: /boot and / on ext4
partitions, swap, fstab with /dev/cciss names. Discovery finds it, inspection
mounts it `ro,noload` and reports; the device's bytes do not change."""

import os
import re
import shutil
from pathlib import Path

import pytest

from agent.source.commands.discover import main as discover_main
from agent.source.discover import populate
from agent.source.inspect.disk import inspect_disk
from agent.runcmd import run
from tests.conftest import sha256_of as sha256
from tests.testbed.loop import attached as loop
from tests.testbed.loop import mounted_rw

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts"),
]

MiB = 1024 * 1024
TREE = Path(__file__).resolve().parents[1] / "fixtures" / "sourceos" / "rhel6-cciss"
BOOT_UUID = "6e6e6e6e-0000-4000-8000-000000000001"
ROOT_UUID = "6e6e6e6e-0000-4000-8000-000000000002"
SWAP_UUID = "6e6e6e6e-0000-4000-8000-000000000003"


def mounts_of(dev):
    """The mount table's lines for dev and its partitions. Only these: the table is the
    machine's, and the other test worker mounts its own disks at any time."""
    return [line for line in Path("/proc/mounts").read_text().splitlines()
            if re.fullmatch(re.escape(dev) + r"(p\d+)?", line.split()[0])]


def copy_tree(src, dst):
    # symlinks=True: the absolute link /etc/grub.conf -> ../boot/grub/grub.conf
    # must stay a link, as on the real system.
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def rhel6_image(tmp_path_factory):
    image = tmp_path_factory.mktemp("rhel6") / "rhel6.img"
    with open(image, "wb") as f:
        f.truncate(128 * MiB)
    run(["parted", "-s", str(image), "unit", "MiB", "mklabel", "msdos",
         "mkpart", "primary", "ext4", "1", "33", "set", "1", "boot", "on",
         "mkpart", "primary", "ext4", "33", "111",
         "mkpart", "primary", "linux-swap", "111", "127"], timeout=60)
    with loop(image) as dev:
        run(["mkfs.ext4", "-q", "-F", "-U", BOOT_UUID, f"{dev}p1"], timeout=60)
        run(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, f"{dev}p2"], timeout=60)
        run(["mkswap", "-U", SWAP_UUID, f"{dev}p3"], timeout=60)
        with mounted_rw(f"{dev}p1") as boot:
            copy_tree(TREE / "boot", boot)
        with mounted_rw(f"{dev}p2") as root:
            copy_tree(TREE / "root", root)
            os.makedirs(os.path.join(root, "boot"), exist_ok=True)
    return image


def test_rhel6_source_os_on_loop_device(rhel6_image):
    before = sha256(rhel6_image)
    # Attached read-write on purpose: a mount that replayed a journal or wrote
    # anything would change the image's bytes.
    with loop(rhel6_image) as dev:
        assert mounts_of(dev) == []
        inv = populate.discover(include_loop=True)
        disk = inv.disk(dev)
        assert disk is not None and disk.capture_default
        src = inspect_disk(disk)
        assert mounts_of(dev) == []           # everything unmounted (checked before the detach)
    assert sha256(rhel6_image) == before

    assert src is not None
    assert (src.os.id, src.os.version_id) == ("rhel", "6.10")
    assert src.device_map == {"(hd0)": "/dev/cciss/c0d0"}     # read from the /boot partition
    assert src.kernel_roots == ["/dev/cciss/c0d0p2"]
    assert sorted((f.id, f.severity) for f in src.findings) == [
        ("bootloader-root-device", "high"), ("fstab-device-names", "high"),
        ("grub-device-map", "medium"), ("ifcfg-hwaddr", "high"),
        ("initramfs-virtio", "high"), ("iscsi-chap-secrets", "low"),
        ("iscsi-identity", "medium"), ("network-filesystems", "low"),
        ("no-cloud-init", "medium"), ("persistent-net-rules", "high"),
        ("persistent-net-rules", "high"),            # one per rule: eth0 and eth1
        ("separate-boot", "low"), ("static-ip", "medium"), ("swap-partition", "low"),
    ]
    # The fixes name the real UUIDs of the partitions the cciss names meant.
    fix = src.finding("fstab-device-names").fix
    assert f"line 9: /dev/cciss/c0d0p2 -> UUID={ROOT_UUID}" in fix
    assert f"line 10: /dev/cciss/c0d0p1 -> UUID={BOOT_UUID}" in fix
    assert f"line 11: /dev/cciss/c0d0p3 -> UUID={SWAP_UUID}" in fix
    assert f"root=/dev/cciss/c0d0p2 -> root=UUID={ROOT_UUID}" in src.finding(
        "bootloader-root-device").fix
    assert src.iscsi_initiator.name == "iqn.1994-05.com.redhat:5f3e2a1b9c8d"
    assert "S3cretChapPw" not in src.render()


def test_cli_inspect_prints_the_report(rhel6_image, capsys):
    before = sha256(rhel6_image)
    with loop(rhel6_image, read_only=True) as dev:
        # --disks: inspect only our device, not loop devices other tests have attached
        assert discover_main(["--include-loop", "--inspect", "--disks", dev]) == 0
    out = capsys.readouterr().out
    assert sha256(rhel6_image) == before
    assert f"=== source OS on {dev.removeprefix('/dev/')} ===" in out
    assert "[HIGH] fstab-device-names" in out
    assert "S3cretChapPw" not in out and "node.session.auth.password = ****" in out


def test_mount_helper_is_read_only_and_always_unmounts(rhel6_image):
    from agent.source.inspect.mount import mounted_ro

    with loop(rhel6_image) as dev:
        with pytest.raises(RuntimeError):
            with mounted_ro(f"{dev}p2", "ext4") as mnt:
                line = next(x for x in Path("/proc/mounts").read_text().splitlines()
                            if x.split()[1] == mnt)
                options = line.split()[3].split(",")
                assert "ro" in options
                with pytest.raises(OSError):
                    Path(mnt, "etc", "new-file").write_text("x")
                raise RuntimeError("inspection failed half way")
        assert mnt not in Path("/proc/mounts").read_text()
        assert not os.path.exists(mnt)
