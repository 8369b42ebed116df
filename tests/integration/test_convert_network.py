"""coldclone-convert's network mapping on real disks under libguestfs: each configuration style
a physical server is installed with, converted by the real receiver's capture + coldclone-convert,
the converted files read back with debugfs (not libguestfs), and the readiness report the
agent's inspection makes of the same tree predicting exactly the fixes applied.

Two small guests, one appliance launch each (~1 min under TCG):
 - a RHEL 8 server: the default route on VLAN bond0.100 over bond0 of eno1 + eno2 (ifcfg, the
   members bound by HWADDR), a management NIC eno3 with HWADDR and a static address (ifcfg),
   a NetworkManager keyfile for eno4 bound by mac-address; BLS entries with $kernelopts in
   grubenv; --network keep;
 - an Ubuntu 22.04 server: netplan with match: macaddress + set-name and a static address, a
   systemd-networkd .link naming a second NIC by its MAC; --network dhcp.
"""

import json
import os
import subprocess

import pytest

from agent.guestos.tree import inspect_tree
from agent import records
from agent.choices import ConvertEngine, ConvertNetwork
from agent.server.convert.model import Fix, prediction_gaps
from tests.conftest import BIN
from tests.testbed import guestdisk, netconfigs

pytestmark = pytest.mark.root

NAMING = {"usr/lib/udev/rules.d/80-net-setup-link.rules": 'NAME=="", ENV{ID_NET_NAME}!="", NAME="$env{ID_NET_NAME}"\n'}
BASE_FILES = {"bin/.keep": "", "sbin/.keep": "", "usr/bin/.keep": "", "var/.keep": ""}

NS = "etc/sysconfig/network-scripts"
RHEL_TREE = {
    "etc/os-release": 'NAME="Red Hat Enterprise Linux"\nVERSION_ID="8.10"\nID="rhel"\nID_LIKE="fedora"\n'
                      'PRETTY_NAME="Red Hat Enterprise Linux 8.10 (Ootpa)"\n',
    "etc/redhat-release": "Red Hat Enterprise Linux release 8.10 (Ootpa)\n",
    "etc/fstab": "UUID=3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8 / xfs defaults 0 0\n",
    "etc/default/grub": 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=auto rhgb quiet"\nGRUB_ENABLE_BLSCFG=true\n',
    "boot/loader/entries/4f2e-4.18.0-553.el8_10.x86_64.conf":
        "title Red Hat Enterprise Linux (4.18.0-553.el8_10.x86_64) 8.10 (Ootpa)\nversion 4.18.0-553.el8_10.x86_64\n"
        "linux /vmlinuz-4.18.0-553.el8_10.x86_64\ninitrd /initramfs-4.18.0-553.el8_10.x86_64.img $tuned_initrd\n"
        "options $kernelopts $tuned_params\nid rhel-20240101-4.18.0-553.el8_10.x86_64\ngrub_users $grub_users\n",
    **{f"{NS}/{name}": text for name, text in netconfigs.RHEL_BOND_VLAN_IFCFG.items()},
    "etc/NetworkManager/system-connections/backup.nmconnection":
        "[connection]\nid=backup\nuuid=8e1f0b52-5a1c-4b0e-9c4d-3b6a2f1e0d9c\ntype=ethernet\n\n"
        "[ethernet]\nmac-address=00:25:90:AA:BB:04\n\n[ipv4]\nmethod=auto\n",
    **NAMING, **BASE_FILES,
}
GRUBENV = "# GRUB Environment Block\nsaved_entry=4f2e-4.18.0-553.el8_10.x86_64\nkernelopts=root=UUID=3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8 ro crashkernel=auto rhgb quiet \n"
RHEL_TREE["boot/grub2/grubenv"] = GRUBENV + "#" * (1024 - len(GRUBENV))

NETPLAN = netconfigs.UBUNTU_NETPLAN
LINK = "# the storage NIC, named by its MAC\n[Match]\nMACAddress=3c:ec:ef:12:34:57\n\n[Link]\nName=stor0\n"
UBUNTU_TREE = {
    "etc/os-release": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n',
    "etc/debian_version": "bookworm/sid\n",
    "etc/fstab": "UUID=3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8 / ext4 defaults 0 1\n",
    "boot/grub/grub.cfg": "menuentry 'Ubuntu' {\n\tlinux\t/boot/vmlinuz-5.15.0-105-generic "
                          "root=UUID=3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8 ro\n}\n",
    "etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=""\nGRUB_CMDLINE_LINUX=""\n',
    "etc/netplan/00-installer-config.yaml": NETPLAN,
    "etc/systemd/network/10-stor0.link": LINK,
    **NAMING, **BASE_FILES,
}
ROOT_UUID = "3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8"


def convert_one(root, tmp_path, name, tree, policy):
    """The tree as a captured disk, the readiness the agent's inspection makes of the same
    tree, and the conversion's manifest section."""
    src = tmp_path / "tree"
    for rel, text in tree.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    predicted = inspect_tree(str(src))
    guestdisk.ext4_disk(str(tmp_path / "sda.img"), tree, uuid=ROOT_UUID)
    cap = guestdisk.make_capture(root, name, {"sda": str(tmp_path / "sda.img")})
    r = subprocess.run([os.path.join(BIN, "coldclone-convert"), cap, "--engine", "fixups", "--network", policy],
                       capture_output=True, text=True, timeout=900)
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stderr[-3000:]
    conv = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    fixes = [records.decode(d, Fix, "fix") for d in conv["fixes"]]
    promised = [f.id for f in predicted.findings if f.conversion]
    gaps = prediction_gaps(promised, ConvertEngine.FIXUPS, fixes, ConvertNetwork(policy))
    assert gaps.agree, (promised, [f.render() for f in fixes], gaps)
    return cap, conv, predicted


def read(cap, path, tmp_path):
    return guestdisk.read_ext4_file(os.path.join(cap, "sda.kvm.qcow2"), path, str(tmp_path))


def test_rhel_bond_vlan_ifcfg_and_keyfile_keep(root, tmp_path):
    cap, conv, predicted = convert_one(root, tmp_path, "rhel8-bond", RHEL_TREE, "keep")
    assert sorted({f.id for f in predicted.findings if f.conversion}) == [
        "ifcfg-hwaddr", "nic-bond-vlan", "nm-mac-address", "primary-nic", "secondary-nics", "static-ip"]
    net = conv["network"]
    assert (net["primary"], net["name"], net["method"], net["addresses"], net["gateway"], net["dns"]) == (
        "bond0.100", "eth0", "static", ["192.0.2.10/24"], "192.0.2.1", ["192.0.2.53"])
    assert (net["flattened"], net["disabled"]) == (["bond0.100", "bond0"], ["eno1", "eno2", "eno3", "backup"])
    assert net["problems"] == [] and conv["warnings"] == []
    # the VLAN is the plain eth0 with its addresses; bond and members do not come up
    assert read(cap, f"/{NS}/ifcfg-bond0.100", tmp_path) == (
        "DEVICE=eth0\nNAME=bond0.100\n# coldclone-convert: bond/VLAN/bridge of the old NICs: VLAN=yes\n"
        "BOOTPROTO=none\nIPADDR=192.0.2.10\nPREFIX=24\nGATEWAY=192.0.2.1\nDNS1=192.0.2.53\nONBOOT=yes\n")
    bond = read(cap, f"/{NS}/ifcfg-bond0", tmp_path)
    assert bond == RHEL_TREE[f"{NS}/ifcfg-bond0"].replace("ONBOOT=yes", "ONBOOT=no")
    eno1 = read(cap, f"/{NS}/ifcfg-eno1", tmp_path)
    assert eno1 == RHEL_TREE[f"{NS}/ifcfg-eno1"].replace(
        "HWADDR=", "# coldclone-convert: MAC of the old hardware: HWADDR=").replace("ONBOOT=yes", "ONBOOT=no")
    eno3 = read(cap, f"/{NS}/ifcfg-eno3", tmp_path)
    assert "# coldclone-convert: MAC of the old hardware: HWADDR=00:25:90:aa:bb:03\n" in eno3
    assert "IPADDR=10.9.0.4\n" in eno3 and eno3.endswith("ONBOOT=no\n")
    nm = read(cap, "/etc/NetworkManager/system-connections/backup.nmconnection", tmp_path)
    assert "# coldclone-convert: MAC of the old hardware: mac-address=00:25:90:AA:BB:04\n" in nm
    assert "\nautoconnect=false\n" in nm
    # net.ifnames=0 where RHEL 8 keeps its kernel line: grubenv's kernelopts (still 1024 bytes)
    # and GRUB_CMDLINE_LINUX; the BLS entry's options ($kernelopts) stay as they are
    env = read(cap, "/boot/grub2/grubenv", tmp_path)
    assert len(env) == 1024 and "crashkernel=auto rhgb quiet net.ifnames=0\n" in env
    assert 'GRUB_CMDLINE_LINUX="crashkernel=auto rhgb quiet net.ifnames=0"' in read(cap, "/etc/default/grub", tmp_path)
    entry = "/boot/loader/entries/4f2e-4.18.0-553.el8_10.x86_64.conf"
    assert read(cap, entry, tmp_path) == RHEL_TREE[entry.lstrip("/")]


def test_ubuntu_netplan_and_networkd_link_dhcp(root, tmp_path):
    cap, conv, predicted = convert_one(root, tmp_path, "ubuntu2204", UBUNTU_TREE, "dhcp")
    assert sorted({f.id for f in predicted.findings if f.conversion}) == [
        "netplan-mac-match", "networkd-mac-match", "primary-nic", "static-ip"]
    net = conv["network"]
    assert (net["primary"], net["name"], net["method"], net["style"]) == ("eno1", "eth0", "dhcp", "netplan")
    assert net["problems"] == [] and conv["warnings"] == []
    import yaml

    plan = read(cap, "/etc/netplan/00-installer-config.yaml", tmp_path)
    assert plan.startswith("# coldclone-convert: rewritten for the cloud instance")
    assert yaml.safe_load(plan) == {"network": {"ethernets": {"eth0": {"dhcp4": True}}, "version": 2}}
    # the original stays beside it, where netplan does not read it
    assert read(cap, "/etc/netplan/00-installer-config.yaml.coldclone-convert-orig", tmp_path) == NETPLAN
    link = read(cap, "/etc/systemd/network/10-stor0.link", tmp_path)
    assert [l for l in link.splitlines() if l and not l.startswith("#")] == []
    assert "# coldclone-convert: names/configures the old NIC by its MAC: MACAddress=3c:ec:ef:12:34:57" in link
    grub = read(cap, "/boot/grub/grub.cfg", tmp_path)
    assert f"root=UUID={ROOT_UUID} ro net.ifnames=0\n" in grub
    assert 'GRUB_CMDLINE_LINUX="net.ifnames=0"' in read(cap, "/etc/default/grub", tmp_path)
