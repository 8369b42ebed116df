"""The conversion fix-ups as pure functions on file text: samples with comments, odd spacing,
lines that must stay as they are, and the names they must refuse to guess."""

import json
import os

import pytest

from agent import records
from agent.server.convert import fixes as F
from agent.server.convert.model import Conversion, Fix, FixKind, GuestOS, Outcome, Volume
from agent.choices import ConvertEngine

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sourceos")

ROOT_UUID = "0a1b2c3d-1111-4222-8333-444455556666"
BOOT_UUID = "0a1b2c3d-aaaa-4222-8333-444455556666"
SWAP_UUID = "5e6f7a8b-2222-4333-8444-555566667777"
VAR_UUID = "9c8d7e6f-3333-4444-8555-666677778888"

# Two disks as the appliance sees them: sda1 /boot, sda2 /, sda3 swap; sdb1 /var; sdb2 RAID member.
DMAP = F.DeviceMap((
    Volume("/dev/sda1", 0, 1, "ext2", BOOT_UUID),
    Volume("/dev/sda2", 0, 2, "ext4", ROOT_UUID),
    Volume("/dev/sda3", 0, 3, "swap", SWAP_UUID),
    Volume("/dev/sdb1", 1, 1, "xfs", VAR_UUID),
    Volume("/dev/sdb2", 1, 2, "linux_raid_member", ""),
))


def fixture(*parts):
    with open(os.path.join(FIXTURES, *parts)) as f:
        return f.read()


# --- device names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,slot", [
    ("/dev/sda2", (0, 2)), ("/dev/sdb", (1, None)), ("/dev/hdc1", (2, 1)), ("/dev/sdaa1", (26, 1)),
    ("/dev/xvda1", (0, 1)), ("/dev/cciss/c0d0p2", (0, 2)), ("/dev/cciss/c0d1", (1, None)),
    ("/dev/ida/c0d0p1", (0, 1)), ("/dev/mapper/mpatha1", (0, 1)), ("/dev/mapper/mpathb-part2", (1, 2)),
    ("/dev/mapper/mpathap3", (0, 3)), ("/dev/nvme0n1p2", (0, 2)), ("/dev/nvme1n1", (1, None)),
    ("UUID=abc", None), ("/dev/md0", None), ("/dev/mapper/vg0-root", None), ("/dev/vg0/root", None),
    ("LABEL=/", None), ("/dev/cciss/c1d0p1", None),
])
def test_device_slot(name, slot):
    assert F.device_slot(name) == slot


def test_uuid_name_refuses_to_guess():
    assert DMAP.uuid_name("/dev/sda2", "ext4") == (f"UUID={ROOT_UUID}", "")
    new, why = DMAP.uuid_name("/dev/sda2", "swap")
    assert new is None and "should hold swap" in why and "ext4" in why
    new, why = DMAP.uuid_name("/dev/sdc1")
    assert new is None and "matches no filesystem" in why
    new, why = DMAP.uuid_name("/dev/sdb2")
    assert new is None and "md RAID member" in why


FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
/dev/sda2\t/               ext4    errors=remount-ro 0       1
  /dev/sda1   /boot   ext2 defaults 0 2   # the boot partition
/dev/sda3       none            swap    sw              0       0
/dev/sdb1 /var xfs defaults 0 2
UUID=11111111-2222-3333-4444-555555555555 /home ext4 defaults 0 2
/dev/mapper/vg0-data /data ext4 defaults 0 2
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
/dev/sdc1 /backup ext4 defaults,nofail 0 2
server:/export /mnt/nfs nfs defaults 0 0
"""


def test_fstab_names_to_uuid_keeping_everything_else():
    res = F.fix_fstab(FSTAB, DMAP)
    lines = res.text.splitlines()
    assert lines[3] == f"UUID={ROOT_UUID}\t/               ext4    errors=remount-ro 0       1"
    assert lines[4] == f"  UUID={BOOT_UUID}   /boot   ext2 defaults 0 2   # the boot partition"
    assert lines[5] == f"UUID={SWAP_UUID}       none            swap    sw              0       0"
    assert lines[6] == f"UUID={VAR_UUID} /var xfs defaults 0 2"
    # Comments, UUID=, LVM, the CD-ROM, NFS and the unknown disk are untouched.
    for i in (0, 1, 2, 7, 8, 9, 10, 11):
        assert lines[i] == FSTAB.splitlines()[i]
    assert [(f.kind, f.line) for f in res.fixes] == [(FixKind.FSTAB_DEVICE, n) for n in (4, 5, 6, 7)]
    assert res.fixes[0].before == "/dev/sda2\t/               ext4    errors=remount-ro 0       1"
    assert res.fixes[0].path == "/etc/fstab"
    # /dev/sdc1 has no filesystem behind it: left, and said so.
    assert len(res.warnings) == 1 and "/etc/fstab:11" in res.warnings[0] and "/dev/sdc1" in res.warnings[0]
    # A second run changes nothing: the fixes are idempotent.
    again = F.fix_fstab(res.text, DMAP)
    assert again.text == res.text and not again.fixes


def test_fstab_wrong_type_at_position_is_left_with_a_warning():
    res = F.fix_fstab("/dev/sda3 / ext4 defaults 0 1\n", DMAP)
    assert not res.fixes and res.text == "/dev/sda3 / ext4 defaults 0 1\n"
    assert "should hold ext4" in res.warnings[0]


def test_fstab_of_rhel6_cciss_fixture():
    dmap = F.DeviceMap((Volume("/dev/sda1", 0, 1, "ext4", BOOT_UUID),
                        Volume("/dev/sda2", 0, 2, "ext4", ROOT_UUID),
                        Volume("/dev/sda3", 0, 3, "swap", SWAP_UUID)))
    text = fixture("rhel6-cciss", "root", "etc", "fstab")
    res = F.fix_fstab(text, dmap)
    assert res.fixes and all(f.before.split()[0].startswith("/dev/cciss/") for f in res.fixes)
    assert "/dev/cciss/" not in "".join(l for l in res.text.splitlines(True) if not l.lstrip().startswith("#"))


def test_fstab_crlf_line_endings_survive():
    res = F.fix_fstab("/dev/sda2 / ext4 defaults 0 1\r\n", DMAP)
    assert res.text == f"UUID={ROOT_UUID} / ext4 defaults 0 1\r\n"


def test_crypttab_second_field():
    text = "# <target> <source> <key> <options>\ncrypt_home  /dev/sda2  none luks,discard\n" \
           "crypt_swap UUID=abc /dev/urandom swap\n"
    res = F.fix_crypttab(text, DMAP)
    assert res.text.splitlines()[1] == f"crypt_home  UUID={ROOT_UUID}  none luks,discard"
    assert res.text.splitlines()[2] == "crypt_swap UUID=abc /dev/urandom swap"
    assert [f.kind for f in res.fixes] == [FixKind.CRYPTTAB_DEVICE]


GRUB_CFG = """\
#
# DO NOT EDIT THIS FILE
#
menuentry 'Debian GNU/Linux' --class debian {
\tinsmod ext2
\tset root='hd0,gpt2'
\tsearch --no-floppy --fs-uuid --set=root 0a1b2c3d-1111-4222-8333-444455556666
\techo\t'Loading Linux 6.1.0-18-amd64 ...'
\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=/dev/sda2 ro  quiet resume=/dev/sda3
\tinitrd\t/boot/initrd.img-6.1.0-18-amd64
}
# linux /old root=/dev/sda9
menuentry 'rescue' {
    linux /boot/vmlinuz root=UUID=0a1b2c3d-1111-4222-8333-444455556666 ro single
    linux16 /boot/vmlinuz16 root=/dev/sda2 real_root=/dev/sda2
}
"""


def test_grub_cfg_root_and_resume():
    res = F.fix_kernel_args(GRUB_CFG, DMAP, "/boot/grub/grub.cfg")
    lines = res.text.splitlines()
    assert lines[8] == (f"\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=UUID={ROOT_UUID} ro  quiet "
                        f"resume=UUID={SWAP_UUID}")
    assert lines[11] == "# linux /old root=/dev/sda9"          # comments are not kernel lines
    assert lines[13] == GRUB_CFG.splitlines()[13]               # already UUID=
    # real_root= is another option; only root= itself is rewritten.
    assert lines[14] == f"    linux16 /boot/vmlinuz16 root=UUID={ROOT_UUID} real_root=/dev/sda2"
    assert [(f.kind, f.line, f.before) for f in res.fixes] == [
        (FixKind.KERNEL_ROOT, 9, "root=/dev/sda2"), (FixKind.KERNEL_RESUME, 9, "resume=/dev/sda3"),
        (FixKind.KERNEL_ROOT, 15, "root=/dev/sda2")]
    assert lines[4] == "\tinsmod ext2" and lines[5] == "\tset root='hd0,gpt2'"


def test_menu_lst_of_rhel6_fixture():
    dmap = F.DeviceMap((Volume("/dev/sda2", 0, 2, "ext4", ROOT_UUID),))
    text = fixture("rhel6-cciss", "boot", "grub", "grub.conf")
    res = F.fix_kernel_args(text, dmap, "/boot/grub/grub.conf")
    assert len(res.fixes) == 1 and res.fixes[0].after == f"root=UUID={ROOT_UUID}"
    kernel = [l for l in res.text.splitlines() if l.strip().startswith("kernel")][0]
    assert f"ro root=UUID={ROOT_UUID} rd_NO_LUKS" in kernel and "crashkernel=auto  KEYBOARDTYPE" in kernel
    # The notice in the comment header still says what anaconda wrote.
    assert "#          kernel /vmlinuz-version ro root=/dev/cciss/c0d0p2" in res.text


def test_default_grub_and_initramfs_resume():
    text = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet resume=/dev/sda3"\n' \
           'GRUB_CMDLINE_LINUX=  "console=tty0 root=/dev/sda2"\n'
    res = F.fix_kernel_args(text, DMAP, "/etc/default/grub")
    assert res.text == (f'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet resume=UUID={SWAP_UUID}"\n'
                        f'GRUB_CMDLINE_LINUX=  "console=tty0 root=UUID={ROOT_UUID}"\n')
    res = F.fix_kernel_args("# written by the installer\nRESUME=/dev/sda3\n", DMAP,
                            "/etc/initramfs-tools/conf.d/resume")
    assert res.text == f"# written by the installer\nRESUME=UUID={SWAP_UUID}\n"
    assert res.fixes[0].kind is FixKind.KERNEL_RESUME


def test_resume_to_a_non_swap_position_is_refused():
    res = F.fix_kernel_args("  kernel /vmlinuz resume=/dev/sda2\n", DMAP, "/boot/grub/menu.lst")
    assert not res.fixes and "should hold swap" in res.warnings[0]


# --- MAC bindings ------------------------------------------------------------------------------

NET_RULES = """\
# This file was automatically generated by the /lib/udev/write_net_rules
# program, run by the persistent-net-generator.rules rules file.

# PCI device 0x8086:0x10d3 (e1000e)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:1A:4B:DC:82:10", ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"
SUBSYSTEM=="net",ACTION=="add",ATTRS{address} == "00:1a:4b:dc:82:11",NAME:="eth1"
SUBSYSTEM=="net", KERNEL=="ib*", NAME="ib0"
"""


def test_net_rules_disable_mac_lines_only():
    res = F.fix_net_rules(NET_RULES)
    lines = res.text.splitlines()
    assert lines[4].startswith("# coldclone-convert: bound to the old MAC: SUBSYSTEM==")
    assert lines[4].endswith('NAME="eth0"')
    assert lines[5].startswith("# coldclone-convert: ") and lines[5].endswith('NAME:="eth1"')
    assert lines[6] == 'SUBSYSTEM=="net", KERNEL=="ib*", NAME="ib0"'
    assert [f.line for f in res.fixes] == [5, 6]
    assert "00:1a:4b:dc:82:10" in res.fixes[0].why
    assert F.fix_net_rules(res.text).fixes == []


def test_net_rules_of_debian7_fixture():
    res = F.fix_net_rules(fixture("debian7-lvm", "etc", "udev", "rules.d", "70-persistent-net.rules"))
    assert res.fixes and all(f.kind is FixKind.NET_RULE_MAC for f in res.fixes)
    assert not [l for l in res.text.splitlines() if "ATTR{address}" in l and not l.startswith("#")]


def test_ifcfg_hwaddr_and_macaddr():
    text = fixture("rhel6-cciss", "root", "etc", "sysconfig", "network-scripts", "ifcfg-eth0")
    text += "  MACADDR = 00:1a:4b:dc:82:99\n# HWADDR=00:00:00:00:00:00\n"
    res = F.fix_ifcfg(text, "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert [f.before.strip() for f in res.fixes] == ["HWADDR=00:1A:4B:DC:82:10", "MACADDR = 00:1a:4b:dc:82:99"]
    assert "# coldclone-convert: MAC of the old hardware: HWADDR=00:1A:4B:DC:82:10\n" in res.text
    assert "IPADDR=192.168.10.15\n" in res.text and "# HWADDR=00:00:00:00:00:00\n" in res.text
    assert "would set the old MAC" in res.fixes[1].why


def test_nm_keyfile_mac_in_ethernet_section_only():
    text = fixture("rocky9-nm", "etc", "NetworkManager", "system-connections", "eno1.nmconnection")
    assert "mac-address=" in text
    text += "\n[wifi]\nmac-address=aa:bb:cc:dd:ee:ff\n"
    res = F.fix_nm_keyfile(text, "/etc/NetworkManager/system-connections/eno1.nmconnection")
    assert len(res.fixes) == 1 and res.fixes[0].kind is FixKind.NM_MAC
    assert "\n[wifi]\nmac-address=aa:bb:cc:dd:ee:ff\n" in res.text
    assert "# coldclone-convert: MAC of the old hardware: mac-address=" in res.text


def test_nm_old_section_name_and_spacing():
    text = "[connection]\nid=eth0\n\n[802-3-ethernet]\n  mac-address = 0;26;75;220;130;16;\nmtu=1500\n"
    res = F.fix_nm_keyfile(text, "/etc/NetworkManager/system-connections/eth0")
    assert res.text.splitlines()[4].startswith("# coldclone-convert: ")
    assert res.text.splitlines()[5] == "mtu=1500"


# --- services ------------------------------------------------------------------------------------

def test_hardware_service_links():
    links = ["/etc/systemd/system/multi-user.target.wants/ipmievd.service",
             "/etc/systemd/system/multi-user.target.wants/ssh.service",
             "/etc/systemd/system/multi-user.target.wants/smartd.service",
             "/etc/rc3.d/S20hp-health", "/etc/rc3.d/K80gpm", "/etc/rc5.d/S15gpm",
             "/etc/systemd/system/getty.target.wants/getty@tty1.service"]
    fixes = F.hardware_service_links(links)
    assert [f.path for f in fixes] == ["/etc/rc3.d/S20hp-health", "/etc/rc5.d/S15gpm",
                                       "/etc/systemd/system/multi-user.target.wants/ipmievd.service",
                                       "/etc/systemd/system/multi-user.target.wants/smartd.service"]
    assert all(f.kind is FixKind.HARDWARE_SERVICE and f.why for f in fixes)


# --- the manifest record ---------------------------------------------------------------------------

def test_conversion_record_is_plain_json():
    fx = F.fix_fstab("/dev/sda2 / ext4 defaults 0 1\n", DMAP).fixes[0]
    conv = Conversion(Outcome.CONVERTED, "converted", ConvertEngine.FIXUPS, {"libguestfs": "guestfish 1.48.6"},
                      "tcg", "test", "t0", "t1", 1.5, {"stage_seconds": 0.1},
                      GuestOS("/dev/sda2", "linux", "debian", "Debian 12", 12, 0, [("/", "/dev/sda2")]),
                      [], [fx], [])
    d = json.loads(records.dumps(conv))
    assert d["result"] == "converted" and d["engine"] == "fixups"
    assert d["fixes"][0]["kind"] == "fstab-device-name" and d["fixes"][0]["line"] == 1
    assert d["os"]["distro"] == "debian"
    assert isinstance(fx, Fix)


def test_interfaces_hwaddress_of_debian7_fixture():
    text = fixture("debian7-lvm", "etc", "network", "interfaces")
    res = F.fix_interfaces(text, "/etc/network/interfaces")
    assert [(f.kind, f.line, f.before.strip()) for f in res.fixes] == [
        (FixKind.INTERFACES_MAC, 16, "hwaddress ether 00:25:90:ab:cd:ef")]
    assert "\t# coldclone-convert" not in res.text
    assert "# coldclone-convert: MAC of the old hardware: \thwaddress ether 00:25:90:ab:cd:ef\n" in res.text
    # everything else, the continued dns-nameservers line included, stays as it was
    assert res.text.replace("# coldclone-convert: MAC of the old hardware: ", "", 1) == text
    assert "would set the old MAC 00:25:90:ab:cd:ef" in res.fixes[0].why
    assert F.fix_interfaces("iface eth1 inet dhcp\n  # hwaddress 00:11:22:33:44:55\n", "x").fixes == []


def test_device_map_to_virtio_names_by_position():
    res = F.fix_device_map(fixture("rhel6-cciss", "boot", "grub", "device.map"), "/boot/grub/device.map")
    assert res.text == "# this device map was generated by anaconda\n(hd0)     /dev/vda\n"
    assert [(f.kind, f.line, f.before, f.after) for f in res.fixes] == [
        (FixKind.GRUB_DEVICE_MAP, 2, "(hd0)     /dev/cciss/c0d0", "(hd0)     /dev/vda")]
    text = "(fd0) /dev/fd0\n(hd0) /dev/sda\n(hd1)\t/dev/sdb\n(hd2) /dev/vdc\n(hd3) /dev/sdab\n"
    res = F.fix_device_map(text, "/boot/grub2/device.map")
    assert res.text == "(fd0) /dev/fd0\n(hd0) /dev/vda\n(hd1)\t/dev/vdb\n(hd2) /dev/vdc\n(hd3) /dev/vdab\n"


def test_device_map_by_id_names_are_commented_out():
    """by-id names stand for no position: the line goes and grub probes the disk again."""
    text = fixture("debian7-lvm", "boot", "grub", "device.map")
    res = F.fix_device_map(text, "/boot/grub/device.map")
    assert len(res.fixes) == 2 and all(f.after.startswith("# coldclone-convert: ") for f in res.fixes)
    assert F.fix_device_map(res.text, "/boot/grub/device.map").fixes == []   # idempotent


def test_mount_plan_leaves_out_what_the_appliance_does_not_have():
    """inspect-get-mountpoints passes unmappable fstab names through (/dev/md0 with no mdadm.conf
    ARRAY line, while the appliance calls the foreign array /dev/md127; /dev/md1 whose disks were
    not captured): / goes on the root inspection found, the rest is mounted only if it exists."""
    from agent.server.convert.guestfs import mount_plan

    os_ = GuestOS(root="/dev/md127", type="linux", distro="debian", product="12", major=12, minor=0,
                  mountpoints=[("/srv", "/dev/md1"), ("/", "/dev/md0"), ("/srv/data", "/dev/sdb1"),
                               ("/boot", "/dev/sda1"), ("/var", "/dev/sdb1")])
    mounts, warnings = mount_plan(os_, {"/dev/md127", "/dev/sda1", "/dev/sda2", "/dev/sdb1"})
    assert mounts == [("/", "/dev/md127"), ("/var", "/dev/sdb1"), ("/boot", "/dev/sda1")]
    assert warnings == [
        "/srv not mounted for the fix-ups: its device /dev/md1 (the guest's fstab) is none of the "
        "filesystems on the captured disks; its files were not checked, and the converted guest "
        "mounts it only if that device is attached",
        "/srv/data not mounted for the fix-ups: it is below /srv, which was not mounted; its files "
        "were not checked, and the converted guest mounts it only if that device is attached"]
    # Everything there: mounted as inspection said, shortest mountpoint first.
    os_.mountpoints = [("/boot", "/dev/sda1"), ("/", "/dev/md127")]
    assert mount_plan(os_, {"/dev/md127", "/dev/sda1"}) == ([("/", "/dev/md127"), ("/boot", "/dev/sda1")], [])
