"""Parsers of source-OS files, on realistic samples (comments, tabs, odd spacing)."""

import pytest

from agent.guestos.fstab import classify_spec, disk_of_spec, parse_fstab, partition_number
from agent.guestos.grub import kernel_roots, parse_device_map
from agent.guestos.iscsi import parse_initiatorname, parse_iscsid_conf
from agent.guestos.lvm import split_mapper_name, vg_of_entry
from agent.guestos.model import DebianIface, FstabEntry, IscsiInitiator, NetRule, NmConnection
from agent.guestos.network import (parse_ifcfg, parse_interfaces, parse_net_rules,
                                   parse_nm_keyfile)
from agent.guestos.osrelease import parse_os_release, parse_redhat_release

FSTAB = """\

#
# /etc/fstab
# Created by anaconda on Tue Mar 12 10:41:07 2013
#
/dev/cciss/c0d0p2       /                       ext4    defaults        1 1
/dev/cciss/c0d0p1   /boot  ext4 defaults 1 2
UUID=0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9	/data	xfs	noatime,nodiratime	0	2
LABEL=scratch /scratch ext3 defaults   # added by ops, ticket 4711
/dev/VolGroup00/LogVol01 swap                    swap    defaults        0 0
/dev/mapper/vg_db-lv_ora--data /u01 ext4 defaults 1 2
/dev/hda3 /old ext2 defaults
/dev/sdb1 /mnt/My\\040Disk vfat noauto,user 0 0
/dev/md0 /srv ext4 defaults 0 2
nas01:/export/home   /home   nfs   defaults,_netdev   0 0
tmpfs                   /dev/shm                tmpfs   defaults        0 0
broken-line-with-two fields
"""


def test_fstab_entries():
    assert parse_fstab(FSTAB) == [
        FstabEntry("/dev/cciss/c0d0p2", "/", "ext4", ["defaults"], 1, 1, 6, "cciss"),
        FstabEntry("/dev/cciss/c0d0p1", "/boot", "ext4", ["defaults"], 1, 2, 7, "cciss"),
        FstabEntry("UUID=0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", "/data", "xfs",
                   ["noatime", "nodiratime"], 0, 2, 8, "uuid"),
        FstabEntry("LABEL=scratch", "/scratch", "ext3", ["defaults"], 0, 0, 9, "label"),
        FstabEntry("/dev/VolGroup00/LogVol01", "swap", "swap", ["defaults"], 0, 0, 10, "lvm"),
        FstabEntry("/dev/mapper/vg_db-lv_ora--data", "/u01", "ext4", ["defaults"], 1, 2, 11,
                   "mapper"),
        FstabEntry("/dev/hda3", "/old", "ext2", ["defaults"], 0, 0, 12, "hd"),
        FstabEntry("/dev/sdb1", "/mnt/My Disk", "vfat", ["noauto", "user"], 0, 0, 13, "sd"),
        FstabEntry("/dev/md0", "/srv", "ext4", ["defaults"], 0, 2, 14, "md"),
        FstabEntry("nas01:/export/home", "/home", "nfs", ["defaults", "_netdev"], 0, 0, 15,
                   "nfs"),
        FstabEntry("tmpfs", "/dev/shm", "tmpfs", ["defaults"], 0, 0, 16, "other"),
    ]


@pytest.mark.parametrize("spec,kind", [
    ("UUID=abc", "uuid"), ("uuid=abc", "uuid"), ("LABEL=/", "label"), ("PARTUUID=1-2", "partuuid"),
    ("/dev/disk/by-uuid/abc", "uuid"), ("/dev/disk/by-id/ata-X_1-part1", "by-id"),
    ("/dev/cciss/c0d0p1", "cciss"), ("/dev/ida/c0d0p1", "cciss"), ("/dev/sdaa12", "sd"),
    ("/dev/xvda1", "sd"), ("/dev/hdb", "hd"), ("/dev/vda1", "vd"), ("/dev/nvme0n1p2", "nvme"),
    ("/dev/md/boot", "md"), ("/dev/md127", "md"), ("/dev/mapper/rl-root", "mapper"),
    ("/dev/rootvg/lv_root", "lvm"), ("server:/export", "nfs"), ("//srv/share", "nfs"),
    ("proc", "other"), ("/swapfile", "other"),
])
def test_classify_spec(spec, kind):
    assert classify_spec(spec) == kind


@pytest.mark.parametrize("spec,disk,num", [
    ("/dev/cciss/c0d0p2", "/dev/cciss/c0d0", 2), ("/dev/cciss/c1d3", "/dev/cciss/c1d3", None),
    ("/dev/sda1", "/dev/sda", 1), ("/dev/hdb12", "/dev/hdb", 12),
    ("/dev/nvme0n1p3", "/dev/nvme0n1", 3), ("/dev/mapper/x-y", None, None),
])
def test_disk_and_partition_of_spec(spec, disk, num):
    assert disk_of_spec(spec) == disk
    assert partition_number(spec) == num


def test_lvm_names():
    assert split_mapper_name("vg_db-lv_ora--data") == ("vg_db", "lv_ora-data")
    assert split_mapper_name("my--vg-root") == ("my-vg", "root")
    assert split_mapper_name("noseparator") is None
    entries = parse_fstab(FSTAB)
    assert [vg_of_entry(e) for e in entries if vg_of_entry(e)] == ["VolGroup00", "vg_db"]


IFCFG = """\
# Broadcom Corporation NetXtreme II BCM5709 Gigabit Ethernet
DEVICE=eth0
HWADDR="00:1A:4B:DC:82:10"
  TYPE=Ethernet
ONBOOT='yes'
BOOTPROTO=none
IPADDR=192.168.10.15   # production address
NETMASK=255.255.255.0
GATEWAY = 192.168.10.1
NAME="System eth0"
export MTU=9000
"""


def test_ifcfg():
    cfg = parse_ifcfg(IFCFG, "/etc/sysconfig/network-scripts/ifcfg-eth0")
    assert cfg.values == {"DEVICE": "eth0", "HWADDR": "00:1A:4B:DC:82:10", "TYPE": "Ethernet",
                          "ONBOOT": "yes", "BOOTPROTO": "none", "IPADDR": "192.168.10.15",
                          "NETMASK": "255.255.255.0", "GATEWAY": "192.168.10.1",
                          "NAME": "System eth0", "MTU": "9000"}
    assert (cfg.device, cfg.hwaddr, cfg.bootproto) == ("eth0", "00:1A:4B:DC:82:10", "none")


def test_ifcfg_device_from_file_name():
    cfg = parse_ifcfg('BOOTPROTO="dhcp"\n', "/etc/sysconfig/network-scripts/ifcfg-em1")
    assert (cfg.device, cfg.hwaddr, cfg.bootproto) == ("em1", None, "dhcp")


INTERFACES = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet static
	address 10.1.2.30
	netmask 255.255.255.0   # /24
	gateway 10.1.2.1
	hwaddress ether 00:25:90:ab:cd:ef
	dns-nameservers 10.1.2.2 \\
	    10.1.2.3

iface eth0 inet6 auto

auto bond0
iface bond0 inet dhcp
    bond-slaves eth1 eth2
"""


def test_debian_interfaces():
    ifaces, sources = parse_interfaces(INTERFACES)
    assert sources == ["/etc/network/interfaces.d/*"]
    assert ifaces == [
        DebianIface("lo", "inet", "loopback", {}, True, 5),
        DebianIface("eth0", "inet", "static", {
            "address": "10.1.2.30", "netmask": "255.255.255.0", "gateway": "10.1.2.1",
            "hwaddress": "ether 00:25:90:ab:cd:ef",
            "dns-nameservers": "10.1.2.2 10.1.2.3"}, True, 8),
        DebianIface("eth0", "inet6", "auto", {}, True, 16),
        DebianIface("bond0", "inet", "dhcp", {"bond-slaves": "eth1 eth2"}, True, 19),
    ]
    # a continued line keeps the number of its first line, and the lines after it their own
    assert [(no, key) for no, key, _ in ifaces[1].option_lines] == [
        (9, "address"), (10, "netmask"), (11, "gateway"), (12, "hwaddress"), (13, "dns-nameservers")]


NM = """\
[connection]
id=System eno1
uuid=2f0c5b1e-8a3d-4c6e-9b7f-1a2b3c4d5e6f
type=ethernet
interface-name=eno1
permissions=

[ethernet]
mac-address=B0:26:28:AA:BB:01
mac-address-blacklist=

[ipv4]
address1=10.4.0.21/24,10.4.0.1
dns=10.4.0.2;
method=manual
"""


def test_nm_keyfile():
    assert parse_nm_keyfile(NM, "/etc/NetworkManager/system-connections/eno1.nmconnection") == \
        NmConnection("/etc/NetworkManager/system-connections/eno1.nmconnection", "System eno1",
                      "ethernet", "eno1", "b0:26:28:aa:bb:01", "manual")


def test_nm_keyfile_old_style_mac_and_broken_file():
    old = "[connection]\nid=Auto eth0\ntype=802-3-ethernet\n\n[802-3-ethernet]\n" \
          "mac-address=0;26;75;220;130;16;\n\n[ipv4]\nmethod=auto\n"
    assert parse_nm_keyfile(old).mac_address == "00:1a:4b:dc:82:10"
    assert parse_nm_keyfile("this is [not an ini").id is None


RULES = """\
# This file was automatically generated by the /lib/udev/write_net_rules
# program, run by the persistent-net-generator.rules rules file.

# PCI device 0x14e4:0x164c (bnx2)
SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:1A:4B:DC:82:10", \
ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"
SUBSYSTEM=="net",ACTION=="add",DRIVERS=="?*",ATTR{address}=="00:1a:4b:dc:82:12",NAME="eth1"
SUBSYSTEM=="net", ACTION=="add", KERNEL=="ib0", NAME="ib0"
"""


def test_persistent_net_rules():
    assert parse_net_rules(RULES) == [NetRule("00:1a:4b:dc:82:10", "eth0", 5),
                                      NetRule("00:1a:4b:dc:82:12", "eth1", 6),
                                      NetRule(None, "ib0", 7)]


def test_initiatorname():
    text = "## DO NOT EDIT OR REMOVE THIS FILE!\n## If you remove this file...\n" \
           "InitiatorName=iqn.1994-05.com.redhat:5f3e2a1b9c8d\n" \
           "  InitiatorAlias = dbhost01  \n"
    assert parse_initiatorname(text) == IscsiInitiator("iqn.1994-05.com.redhat:5f3e2a1b9c8d",
                                                       "dbhost01")
    assert parse_initiatorname("# nothing\n") == IscsiInitiator(None, None)


ISCSID = """\
# iscsid.conf
node.startup = automatic
#node.session.auth.password = commented_out
node.session.auth.authmethod = CHAP
node.session.auth.username = dbhost01
node.session.auth.password = S3cretChapPw!
node.session.auth.username_in = array01
node.session.auth.password_in=MutualS3cret
discovery.sendtargets.auth.password = D1scS3cret
"""


def test_iscsid_conf_keeps_secrets_out_of_every_output():
    conf = parse_iscsid_conf(ISCSID)
    assert conf.chap
    assert conf.settings == {"node.startup": "automatic",
                             "node.session.auth.authmethod": "CHAP",
                             "node.session.auth.username": "dbhost01",
                             "node.session.auth.username_in": "array01"}
    assert {k: v.reveal() for k, v in conf.secrets.items()} == {
        "node.session.auth.password": "S3cretChapPw!",
        "node.session.auth.password_in": "MutualS3cret",
        "discovery.sendtargets.auth.password": "D1scS3cret"}
    for text in (repr(conf), str(conf), str(conf.secrets)):
        assert "S3cret" not in text and "****" in text


def test_os_release():
    text = '# comment\nNAME="Red Hat Enterprise Linux"\nVERSION="8.9 (Ootpa)"\nID="rhel"\n' \
           'ID_LIKE="fedora"\nVERSION_ID="8.9"\nPRETTY_NAME="Red Hat Enterprise Linux 8.9 ' \
           '(Ootpa)"\nBROKEN="unbalanced\n'
    v = parse_os_release(text)
    assert (v["ID"], v["VERSION_ID"], v["PRETTY_NAME"], v["BROKEN"]) == (
        "rhel", "8.9", "Red Hat Enterprise Linux 8.9 (Ootpa)", "unbalanced")


@pytest.mark.parametrize("text,os_id,version", [
    ("Red Hat Enterprise Linux Server release 6.10 (Santiago)\n", "rhel", "6.10"),
    ("Red Hat Enterprise Linux Server release 5.11 (Tikanga)", "rhel", "5.11"),
    ("CentOS release 6.5 (Final)\n", "centos", "6.5"),
    ("CentOS Linux release 7.9.2009 (Core)\n", "centos", "7.9.2009"),
])
def test_redhat_release(text, os_id, version):
    info = parse_redhat_release(text)
    assert (info.id, info.version_id, info.family, info.pretty_name) == (
        os_id, version, "redhat", text.strip())


def test_device_map_and_kernel_roots():
    assert parse_device_map("# this device map was generated by anaconda\n"
                            "(hd0)     /dev/cciss/c0d0\n(hd1)\t/dev/sdb   # usb\n") == {
        "(hd0)": "/dev/cciss/c0d0", "(hd1)": "/dev/sdb"}
    grub_conf = ("#          kernel /vmlinuz-version ro root=/dev/sda9\n"
                 "title RHEL\n\troot (hd0,0)\n"
                 "\tkernel /vmlinuz-2.6.32 ro root=/dev/cciss/c0d0p2 rhgb quiet\n"
                 "\tkernel /vmlinuz-2.6.18 ro root=LABEL=/ quiet\n")
    assert kernel_roots(grub_conf) == ["/dev/cciss/c0d0p2", "LABEL=/"]
    assert kernel_roots('GRUB_CMDLINE_LINUX="root=/dev/sda2 rd.lvm.lv=rl/root"\n') == [
        "/dev/sda2"]
    assert kernel_roots("\tlinux /vmlinuz-5.14 root=UUID=ab-cd ro\n") == ["UUID=ab-cd"]
