"""Inspection of whole source-OS trees and the readiness report built from them."""

import os
from pathlib import Path

from agent import records
from agent.guestos import files
from agent.guestos.model import IscsiInitiator, OsInfo
from agent.source.inspect.mount import ro_options
from agent.guestos.tree import inspect_tree

TREES = Path(__file__).resolve().parents[1] / "fixtures" / "sourceos"
RHEL6 = TREES / "rhel6-cciss"


def ids(src):
    return sorted((f.id, f.severity) for f in src.findings)


def test_rhel6_cciss_tree():
    src = inspect_tree(str(RHEL6 / "root"), boot_root=str(RHEL6 / "boot"))
    assert src.os == OsInfo(id="rhel", version_id="6.10",
                            name="Red Hat Enterprise Linux Server",
                            pretty_name="Red Hat Enterprise Linux Server release 6.10 (Santiago)",
                            family="redhat", source="/etc/redhat-release")
    assert [(e.spec, e.mountpoint) for e in src.fstab if e.spec.startswith("/dev/")] == [
        ("/dev/cciss/c0d0p2", "/"), ("/dev/cciss/c0d0p1", "/boot"),
        ("/dev/cciss/c0d0p3", "swap")]
    assert src.lvm_vgs == []
    assert [(c.device, c.hwaddr) for c in src.ifcfg] == [("eth0", "00:1A:4B:DC:82:10")]
    assert [(r.mac, r.name) for r in src.net_rules] == [("00:1a:4b:dc:82:10", "eth0"),
                                                        ("00:1a:4b:dc:82:12", "eth1")]
    assert src.iscsi_initiator == IscsiInitiator("iqn.1994-05.com.redhat:5f3e2a1b9c8d", None)
    assert src.device_map == {"(hd0)": "/dev/cciss/c0d0"}
    assert src.kernel_roots == ["/dev/cciss/c0d0p2"]
    assert not src.cloud_init
    assert ids(src) == [
        ("bootloader-root-device", "high"), ("fstab-device-names", "high"),
        ("grub-device-map", "medium"), ("ifcfg-hwaddr", "high"),
        ("initramfs-virtio", "high"), ("iscsi-chap-secrets", "low"),
        ("iscsi-identity", "medium"), ("network-filesystems", "low"),
        ("no-cloud-init", "medium"), ("persistent-net-rules", "high"),
        ("persistent-net-rules", "high"),
        ("separate-boot", "low"), ("static-ip", "medium"), ("swap-partition", "low"),
    ]
    fstab = src.finding("fstab-device-names")
    assert fstab.evidence == ["/etc/fstab:9: /dev/cciss/c0d0p2 / ext4",
                              "/etc/fstab:10: /dev/cciss/c0d0p1 /boot ext4",
                              "/etc/fstab:11: /dev/cciss/c0d0p3 swap swap"]
    assert "UUID=" in fstab.fix and "line 9: /dev/cciss/c0d0p2" in fstab.fix
    assert src.finding("grub-device-map").evidence == [
        "/boot/grub/device.map: (hd0) /dev/cciss/c0d0"]
    assert "ifcfg-eth0" in src.finding("ifcfg-hwaddr").fix


def test_concrete_uuid_in_fix_when_discovery_knows_it():
    src = inspect_tree(str(RHEL6 / "root"), boot_root=str(RHEL6 / "boot"),
                       devices={"/dev/cciss/c0d0p2": "UUID=1111", "/dev/cciss/c0d0p1": "UUID=2222"})
    fix = src.finding("fstab-device-names").fix
    assert "line 9: /dev/cciss/c0d0p2 -> UUID=1111" in fix
    assert "line 10: /dev/cciss/c0d0p1 -> UUID=2222" in fix
    assert "line 11: /dev/cciss/c0d0p3 -> UUID=<blkid of it>" in fix
    assert "root=/dev/cciss/c0d0p2 -> root=UUID=1111" in src.finding(
        "bootloader-root-device").fix


def test_chap_secret_never_printed():
    src = inspect_tree(str(RHEL6 / "root"), boot_root=str(RHEL6 / "boot"))
    assert src.iscsid.secrets["node.session.auth.password"].reveal() == "S3cretChapPw!"
    for text in (src.render(), records.dumps(src), repr(src)):
        assert "S3cretChapPw" not in text
        assert "node.session.auth.password = ****" in text or "'****'" in text \
            or '"****"' in text


def test_debian_lvm_tree():
    src = inspect_tree(str(TREES / "debian7-lvm"))
    assert (src.os.id, src.os.version_id, src.os.family) == ("debian", "7", "debian")
    assert src.lvm_vgs == ["vg0"]
    assert [(i.name, i.method, i.auto) for i in src.interfaces] == [
        ("eth0", "static", True), ("em2", "dhcp", True)]   # em2 from interfaces.d
    assert ids(src) == [
        ("fstab-device-names", "medium"), ("grub-device-map", "medium"),
        ("interfaces-hwaddress", "medium"),
        ("lvm-root", "medium"), ("no-cloud-init", "medium"),
        ("persistent-net-rules", "high"), ("secondary-nics", "medium"), ("separate-boot", "low"),
        ("static-ip", "medium"), ("swap-partition", "low"),
    ]
    # Debian 7's udev names NICs ethN (no predictable-name rules): eth0 stays eth0 once its MAC
    # rule is gone, so no net.ifnames=0; em2 (interfaces.d) is a secondary NIC, disabled
    assert "primary-nic" not in [f.id for f in src.findings]
    assert src.network.primary == "eth0" and not src.network.predictable_names
    assert src.finding("secondary-nics").evidence == ["/etc/network/interfaces.d/backup:2: em2 (DHCP)"]
    assert "lvextend" in src.finding("lvm-root").fix and "vg0" in src.finding("lvm-root").title
    assert src.finding("fstab-device-names").evidence == ["/etc/fstab:8: /dev/sdb1 /srv/data xfs"]


def test_rocky9_nm_tree_with_cloud_init():
    src = inspect_tree(str(TREES / "rocky9-nm"))
    assert (src.os.id, src.os.major, src.os.family) == ("rocky", 9, "redhat")
    assert src.cloud_init
    assert src.cloud_init_evidence == ["/usr/bin/cloud-init", "/etc/cloud/cloud.cfg",
                                       "/usr/lib/python3.9/site-packages/cloudinit"]
    assert [(c.interface_name, c.mac_address, c.ipv4_method) for c in src.nm_connections] == [
        ("eno1", "b0:26:28:aa:bb:01", "manual")]
    assert ids(src) == [
        ("lvm-root", "medium"),
        ("nm-mac-address", "high"), ("primary-nic", "high"), ("separate-boot", "low"),
        ("static-ip", "medium"), ("swap-partition", "low"),
    ]
    # eno1 is a slot-derived name under udev's predictable naming: the keyfile moves to eth0,
    # and net.ifnames=0 makes the first virtio NIC eth0 whatever its slot
    primary = src.finding("primary-nic")
    assert primary.conversion.startswith("put net.ifnames=0 on the kernel lines")
    assert "move eno1's configuration" in primary.conversion
    assert "with --network keep eth0 keeps 10.4.0.21/24 via 10.4.0.1 (DNS 10.4.0.2)" in primary.conversion


def test_multiple_disks_from_discovery_count():
    src = inspect_tree(str(TREES / "rocky9-nm"), disk_count=3)
    assert src.finding("multiple-disks").title == "the system uses 3 disks"


def test_empty_tree_does_not_crash(tmp_path):
    src = inspect_tree(str(tmp_path))
    assert src.os.family == "unknown" and src.fstab == []
    assert ids(src) == [("no-cloud-init", "medium")]


def test_absolute_symlinks_stay_inside_the_tree(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot" / "grub").mkdir(parents=True)
    (root / "boot" / "grub" / "grub.conf").write_text("kernel /vmlinuz ro root=/dev/sda2\n")
    os.symlink("/boot/grub/grub.conf", root / "etc" / "grub.conf")
    os.symlink("/etc/shadow", root / "etc" / "evil")
    os.symlink("../../../../../../etc/hostname", root / "etc" / "evil2")
    assert files.read_text(str(root), "etc/grub.conf") == "kernel /vmlinuz ro root=/dev/sda2\n"
    assert files.resolve(str(root), "etc/evil") == str(root / "etc" / "shadow")
    assert files.read_text(str(root), "etc/evil") is None
    assert files.read_text(str(root), "etc/evil2") is None
    os.symlink("loop", root / "etc" / "loop")
    assert files.read_text(str(root), "etc/loop") is None


def test_render_fits_80_columns():
    src = inspect_tree(str(RHEL6 / "root"), boot_root=str(RHEL6 / "boot"))
    assert max(len(line) for line in src.render().splitlines()) <= 80


def test_read_only_mount_options():
    assert ro_options("ext4") == ("ro,noload",)
    assert ro_options("ext3") == ("ro,noload",)
    assert ro_options("xfs") == ("ro,norecovery",)
    # the kernel's current name first (5.9+), the one older kernels know after it
    assert ro_options("btrfs") == ("ro,rescue=nologreplay", "ro,nologreplay")
    assert ro_options("vfat") == ("ro",)
    from agent.source.inspect.mount import MOUNTABLE
    assert all(o.split(",")[0] == "ro" for fs in MOUNTABLE for o in ro_options(fs))
