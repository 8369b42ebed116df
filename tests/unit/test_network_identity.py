"""The source server's network as one model (guestos/netconfig.py), the readiness findings it
predicts, and the conversion's mapping of each configuration style (server/convert/netmap.py):
the primary interface (the default route) on the first virtio NIC as eth0 under
net.ifnames=0, --network keep|dhcp, bonds/VLANs made plain, the others disabled. Every
configuration text here is what the distribution's installer or tool writes."""

import hashlib

from agent.guestos import esp, netconfig, readiness
from agent.guestos.model import BindingKind, EspLoaders, IfaceKind, NetStyle, SourceOS
from agent.server.convert import netmap
from agent.server.convert.model import FixKind, ConvertNetwork
from tests.testbed import netconfigs


class DictFiles:
    """A guest's files from a dict (path -> text): the FileSource the parsers read through."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def read(self, path):
        return self.files.get(path)

    def listdir(self, path):
        path = path.rstrip("/")
        return sorted({p[len(path) + 1:].split("/")[0] for p in self.files if p.startswith(path + "/")})

    def digest(self, path):
        return hashlib.sha256(self.files[path].encode()).hexdigest() if path in self.files else None


NAMING = {"/usr/lib/udev/rules.d/80-net-setup-link.rules": "# systemd's predictable names\n"}
GRUB_CFG = """menuentry 'Debian GNU/Linux' {
\tlinux\t/boot/vmlinuz-6.1.0-28-amd64 root=UUID=0d0e ro quiet
\tinitrd\t/boot/initrd.img-6.1.0-28-amd64
}
"""
DEFAULT_GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0"\n'

# Debian 12 installer, static set-up on the onboard e1000 in slot 3
INTERFACES_STATIC = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug ens3
iface ens3 inet static
\taddress 10.0.2.77/24
\tgateway 10.0.2.2
\t# dns-* options are implemented by the resolvconf package, if installed
\tdns-nameservers 10.0.2.3
\tup ip route add 192.168.50.0/24 via 10.0.2.1 dev ens3
"""
BACKUP_NIC = "auto eno2\niface eno2 inet static\n    address 192.168.9.5\n    netmask 255.255.255.0\n"


def debian(extra: dict[str, str] | None = None) -> DictFiles:
    return DictFiles({"/etc/network/interfaces": INTERFACES_STATIC, "/etc/network/interfaces.d/backup": BACKUP_NIC,
                      "/boot/grub/grub.cfg": GRUB_CFG, "/etc/default/grub": DEFAULT_GRUB,
                      "/etc/resolv.conf": "nameserver 10.0.2.3\n", **NAMING, **(extra or {})})


def roles(cfg, policy=ConvertNetwork.DHCP):
    return netmap.Roles(netconfig.plan(cfg), policy)


def test_ifupdown_static_server_model_and_plan():
    cfg = netconfig.read_network(debian())
    assert cfg.styles == [NetStyle.IFUPDOWN]
    assert cfg.primary == "ens3" and "default route (gateway 10.0.2.2)" in cfg.primary_why
    prim = cfg.primary_iface
    assert (prim.method, prim.addresses, prim.gateway, prim.dns, prim.onboot) == (
        "static", ["10.0.2.77/24"], "10.0.2.2", ["10.0.2.3"], True)
    assert prim.routes == ["ip route add 192.168.50.0/24 via 10.0.2.1 dev ens3"]
    assert cfg.named("eno2")[0].addresses == ["192.168.9.5/24"]
    assert cfg.predictable_names and cfg.nameservers == ["10.0.2.3"]
    assert [(b.kind, b.name) for b in cfg.bindings] == [(BindingKind.HARDWARE_NAME, "ens3"),
                                                        (BindingKind.HARDWARE_NAME, "eno2")]
    p = netconfig.plan(cfg)
    assert (p.primary.name, p.new_name, p.kernel_arg, p.rename, p.flattened, p.members, p.secondaries) == (
        "ens3", "eth0", True, True, [], [], ["eno2"])


def test_net_ifnames_already_on_the_kernel_line_and_old_udev_need_no_kernel_argument():
    with_arg = debian({"/etc/default/grub": 'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"\n'})
    cfg = netconfig.read_network(with_arg)
    assert cfg.kernel_args == ["net.ifnames=0"] and not cfg.predictable_names
    assert not netconfig.plan(cfg).kernel_arg and netconfig.plan(cfg).rename
    # a commented-out kernel line says nothing
    commented = debian({"/etc/default/grub": '#GRUB_CMDLINE_LINUX="net.ifnames=0"\n'})
    assert netconfig.read_network(commented).kernel_args == []
    # udev without predictable naming (RHEL 6, Debian 7): the kernel's ethN stay
    old = DictFiles({"/etc/network/interfaces": "auto eth0\niface eth0 inet dhcp\n"})
    cfg = netconfig.read_network(old)
    assert not cfg.predictable_names
    assert not netconfig.plan(cfg).needed


def test_readiness_predicts_the_mapping_per_interface():
    src = SourceOS(network=netconfig.read_network(debian()))
    found = {f.id: f for f in readiness.network_findings(src)}
    assert sorted(found) == ["primary-nic", "secondary-nics", "static-ip"]
    primary = found["primary-nic"]
    assert primary.severity == "high"
    assert "ens3 is the name udev derives from the old NIC's PCI slot" in primary.detail
    assert primary.conversion == (
        "put net.ifnames=0 on the kernel lines (the first virtio NIC is then eth0 whatever its PCI slot) and "
        "move ens3's configuration (/etc/network/interfaces) to eth0; with --network keep eth0 keeps "
        "10.0.2.77/24 via 10.0.2.2 (DNS 10.0.2.3), with --network dhcp (the default) it uses DHCP")
    assert primary.evidence == ["/etc/network/interfaces:10: ens3 (static 10.0.2.77/24 via 10.0.2.2; DNS 10.0.2.3)"]
    assert found["static-ip"].conversion.startswith("keep it with --network keep (for a port with the fixed IP 10.0.2.77)")
    assert found["secondary-nics"].evidence == ["/etc/network/interfaces.d/backup:2: eno2 (static 192.168.9.5/24)"]


def test_ifupdown_keep_renames_and_keeps_every_setting():
    cfg = netconfig.read_network(debian())
    res = netmap.map_interfaces(INTERFACES_STATIC, "/etc/network/interfaces", roles(cfg, ConvertNetwork.KEEP))
    assert res.text == INTERFACES_STATIC.replace("allow-hotplug ens3", "allow-hotplug eth0").replace(
        "iface ens3 inet", "iface eth0 inet").replace("dev ens3", "dev eth0")
    assert [(f.kind, f.line, f.before, f.after) for f in res.fixes] == [
        (FixKind.NET_RENAME, 9, "allow-hotplug ens3", "allow-hotplug eth0"),
        (FixKind.NET_RENAME, 10, "iface ens3", "iface eth0"),
        (FixKind.NET_RENAME, 15, "up ip route add 192.168.50.0/24 via 10.0.2.1 dev ens3",
         "up ip route add 192.168.50.0/24 via 10.0.2.1 dev eth0")]
    # the other file: eno2 is no longer brought up, its stanza stays for reference
    res = netmap.map_interfaces(BACKUP_NIC, "/etc/network/interfaces.d/backup", roles(cfg, ConvertNetwork.KEEP))
    assert res.text.splitlines()[0] == "# coldclone-convert: not brought up: auto eno2"
    assert res.text.splitlines()[1:] == BACKUP_NIC.splitlines()[1:]
    assert [(f.kind, f.line) for f in res.fixes] == [(FixKind.NET_DISABLED, 1)]


def test_ifupdown_dhcp_comments_the_static_settings():
    cfg = netconfig.read_network(debian())
    res = netmap.map_interfaces(INTERFACES_STATIC, "/etc/network/interfaces", roles(cfg))
    lines = res.text.splitlines()
    assert lines[8:11] == ["allow-hotplug eth0", "iface eth0 inet dhcp",
                           "# coldclone-convert: static setting, DHCP now: \taddress 10.0.2.77/24"]
    assert lines[11] == "# coldclone-convert: static setting, DHCP now: \tgateway 10.0.2.2"
    assert lines[12] == "\t# dns-* options are implemented by the resolvconf package, if installed"
    assert lines[13].startswith("# coldclone-convert: static setting, DHCP now: \tdns-nameservers")
    assert lines[14].startswith("# coldclone-convert: static setting, DHCP now: \tup ip route add")
    assert len(lines) == len(INTERFACES_STATIC.splitlines())
    assert [f.kind for f in res.fixes] == [FixKind.NET_RENAME, FixKind.NET_RENAME, FixKind.NET_DHCP] + [FixKind.NET_DHCP] * 4
    assert (res.fixes[2].before, res.fixes[2].after) == ("inet static", "inet dhcp")


# RHEL 7: a bond of two onboard NICs bound by HWADDR, a VLAN on it carrying the default route,
# and a management NIC with its own static address
IFCFG = {f"/etc/sysconfig/network-scripts/{name}": text for name, text in netconfigs.RHEL_BOND_VLAN_IFCFG.items()}
IFCFG["/etc/sysconfig/network-scripts/ifcfg-eno3.bak"] = "DEVICE=eno3\nONBOOT=yes\n"    # ignored, as ifup does


def test_ifcfg_bond_and_vlan_model_and_plan():
    cfg = netconfig.read_network(DictFiles({**IFCFG, **NAMING}))
    assert cfg.primary == "bond0.100"
    vlan, bond = cfg.named("bond0.100")[0], cfg.named("bond0")[0]
    assert (vlan.kind, vlan.parent, vlan.vlan_id, vlan.addresses, vlan.dns) == (
        IfaceKind.VLAN, "bond0", 100, ["192.0.2.10/24"], ["192.0.2.53"])
    assert (bond.kind, bond.members) == (IfaceKind.BOND, ["eno1", "eno2"])
    assert [(b.kind, b.name) for b in cfg.bindings if b.mac] == [
        (BindingKind.IFCFG_HWADDR, "eno1"), (BindingKind.IFCFG_HWADDR, "eno2"), (BindingKind.IFCFG_HWADDR, "eno3")]
    p = netconfig.plan(cfg)
    assert (p.flattened, p.members, p.secondaries) == (["bond0.100", "bond0"], ["eno1", "eno2"], ["eno3"])
    src = SourceOS(network=cfg)
    ids = sorted(f.id for f in readiness.network_findings(src))
    assert ids == ["ifcfg-hwaddr"] * 3 + ["nic-bond-vlan", "primary-nic", "secondary-nics", "static-ip"]
    bondf = next(f for f in readiness.network_findings(src) if f.id == "nic-bond-vlan")
    assert bondf.title == "the primary interface is a vlan bond0.100 over bond bond0 on the old NICs"
    assert bondf.conversion == "make bond0.100 the plain eth0 with its addresses and disable eno1, eno2"


def test_ifcfg_mapping_keep_and_dhcp():
    cfg = netconfig.read_network(DictFiles({**IFCFG, **NAMING}))
    path = "/etc/sysconfig/network-scripts/ifcfg-bond0.100"
    res = netmap.map_ifcfg(IFCFG[path], path, "bond0.100", roles(cfg, ConvertNetwork.KEEP))
    assert res.text == ("DEVICE=eth0\nNAME=bond0.100\n# coldclone-convert: bond/VLAN/bridge of the old NICs: VLAN=yes\n"
                        "BOOTPROTO=none\nIPADDR=192.0.2.10\nPREFIX=24\nGATEWAY=192.0.2.1\nDNS1=192.0.2.53\nONBOOT=yes\n")
    assert [f.kind for f in res.fixes] == [FixKind.NET_RENAME, FixKind.NET_FLATTEN]
    res = netmap.map_ifcfg(IFCFG[path], path, "bond0.100", roles(cfg))
    assert "BOOTPROTO=dhcp\n" in res.text and "# coldclone-convert: static setting, DHCP now: IPADDR=192.0.2.10\n" in res.text
    assert sum(f.kind is FixKind.NET_DHCP for f in res.fixes) == 5       # BOOTPROTO, IPADDR, PREFIX, GATEWAY, DNS1
    bond = "/etc/sysconfig/network-scripts/ifcfg-bond0"
    res = netmap.map_ifcfg(IFCFG[bond], bond, "bond0", roles(cfg))
    assert res.text.endswith("ONBOOT=no\n") and [f.kind for f in res.fixes] == [FixKind.NET_MEMBER_DISABLED]
    eno3 = "/etc/sysconfig/network-scripts/ifcfg-eno3"
    res = netmap.map_ifcfg(IFCFG[eno3], eno3, "eno3", roles(cfg))   # no ONBOOT line: yes by default
    assert res.text.endswith("ONBOOT=no\n") and [f.kind for f in res.fixes] == [FixKind.NET_DISABLED]
    assert res.fixes[0].before == "(no ONBOOT=, so yes)"


# Rocky 9: NetworkManager keyfile bound to the NIC's MAC, a second NIC by name only
NM_ENO1 = """[connection]
id=eno1
uuid=2f0c5b1e-8a3d-4c6e-9b7f-1a2b3c4d5e6f
type=ethernet
interface-name=eno1

[ethernet]
mac-address=B0:26:28:AA:BB:01

[ipv4]
address1=10.4.0.21/24,10.4.0.1
dns=10.4.0.2;
method=manual

[ipv6]
method=ignore
"""
NM_ENO2 = "[connection]\nid=backup\ntype=ethernet\ninterface-name=eno2\n\n[ipv4]\nmethod=auto\n"


def test_nm_keyfiles():
    d = "/etc/NetworkManager/system-connections"
    cfg = netconfig.read_network(DictFiles({f"{d}/eno1.nmconnection": NM_ENO1, f"{d}/backup.nmconnection": NM_ENO2,
                                            **NAMING}))
    assert cfg.primary == "eno1" and cfg.primary_iface.mac == "b0:26:28:aa:bb:01"
    r = roles(cfg)
    res = netmap.map_nm_keyfile(NM_ENO1, f"{d}/eno1.nmconnection", "eno1", r)
    assert "interface-name=eth0\n" in res.text and "method=auto\n" in res.text
    assert "# coldclone-convert: static setting, DHCP now: address1=10.4.0.21/24,10.4.0.1\n" in res.text
    assert [f.kind for f in res.fixes] == [FixKind.NET_RENAME, FixKind.NET_DHCP, FixKind.NET_DHCP, FixKind.NET_DHCP]
    res = netmap.map_nm_keyfile(NM_ENO2, f"{d}/backup.nmconnection", "eno2", r)
    assert res.text.startswith("[connection]\n# coldclone-convert: eno2 was a NIC of the old server")
    assert "\nautoconnect=false\nid=backup\n" in res.text and [f.kind for f in res.fixes] == [FixKind.NET_DISABLED]


# Ubuntu 22.04 (subiquity): netplan bound to the MAC with set-name, and a second NIC by DHCP
NETPLAN = netconfigs.UBUNTU_NETPLAN.replace("  version: 2\n", "    enp65s0f1:\n      dhcp4: true\n  version: 2\n")


def test_netplan_match_and_set_name():
    path = "/etc/netplan/00-installer-config.yaml"
    cfg = netconfig.read_network(DictFiles({path: NETPLAN, **NAMING}))
    assert cfg.primary == "eno1" and cfg.primary_iface.gateway == "192.0.2.1"
    assert [(b.kind, b.mac, b.name) for b in cfg.bindings if b.mac] == [
        (BindingKind.NETPLAN_MATCH, "3c:ec:ef:12:34:56", "eno1")]
    src = SourceOS(network=cfg)
    assert "netplan-mac-match" in [f.id for f in readiness.network_findings(src)]
    res = netmap.map_netplan(NETPLAN, path, roles(cfg, ConvertNetwork.KEEP))
    doc = netconfig.load_yaml(res.text)
    assert doc["network"]["ethernets"] == {"eth0": {"addresses": ["192.0.2.20/24"],
                                                    "routes": [{"to": "default", "via": "192.0.2.1"}],
                                                    "nameservers": {"addresses": ["192.0.2.53"]}}}
    assert res.text.startswith("# coldclone-convert: rewritten for the cloud instance")
    assert netmap.backup_name(path) in res.text.splitlines()[0]
    assert [f.kind for f in res.fixes] == [FixKind.NETPLAN_MAC, FixKind.NET_RENAME, FixKind.NET_DISABLED]
    res = netmap.map_netplan(NETPLAN, path, roles(cfg))
    assert netconfig.load_yaml(res.text)["network"]["ethernets"] == {"eth0": {"dhcp4": True}}


LINK = "[Match]\nMACAddress=00:25:90:aa:bb:01\n\n[Link]\nName=lan0\n"
NETWORK = "[Match]\nName=lan0\n\n[Network]\nAddress=198.51.100.7/24\nGateway=198.51.100.1\nDNS=198.51.100.53\n"


def test_networkd_link_and_network():
    files = {"/etc/systemd/network/10-lan0.link": LINK, "/etc/systemd/network/20-lan0.network": NETWORK, **NAMING}
    cfg = netconfig.read_network(DictFiles(files))
    assert cfg.primary == "lan0" and [(b.kind, b.name) for b in cfg.bindings] == [(BindingKind.NETWORKD_MATCH, "lan0")]
    p = netconfig.plan(cfg)
    assert p.rename and p.kernel_arg
    res = netmap.map_networkd_link(LINK, "/etc/systemd/network/10-lan0.link")
    assert all(l.startswith("# coldclone-convert:") for l in res.text.splitlines() if l)
    assert [f.kind for f in res.fixes] == [FixKind.NETWORKD_MAC] * 4
    res = netmap.map_networkd_network(NETWORK, "/etc/systemd/network/20-lan0.network", "lan0", roles(cfg))
    assert res.text == ("[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n"
                        "# coldclone-convert: static setting, DHCP now: Address=198.51.100.7/24\n"
                        "# coldclone-convert: static setting, DHCP now: Gateway=198.51.100.1\n"
                        "# coldclone-convert: static setting, DHCP now: DNS=198.51.100.53\n")


def test_a_keyfile_matching_any_nic_needs_no_name():
    nm = "[connection]\nid=Wired connection 1\ntype=ethernet\n\n[ipv4]\nmethod=auto\n"
    cfg = netconfig.read_network(DictFiles({"/etc/NetworkManager/system-connections/w.nmconnection": nm, **NAMING}))
    assert cfg.primary == "Wired connection 1"
    assert not netconfig.plan(cfg).needed
    assert readiness.network_findings(SourceOS(network=cfg)) == []


def test_what_cannot_be_mapped_is_a_high_finding():
    team = 'DEVICE=team0\nTYPE=Team\nTEAM_CONFIG=\'{"runner": {"name": "lacp"}}\'\nBOOTPROTO=dhcp\nONBOOT=yes\n'
    cfg = netconfig.read_network(DictFiles({"/etc/sysconfig/network-scripts/ifcfg-team0": team,
                                            "/etc/netplan/bad.yaml": "network: [unclosed\n"}))
    findings = [f for f in readiness.network_findings(SourceOS(network=cfg)) if f.id == "network-unmapped"]
    assert [f.severity for f in findings] == ["high", "high"]
    assert findings[0].detail.startswith("/etc/netplan/bad.yaml: not valid YAML")
    assert "team0 is neither an Ethernet NIC, a bond, a VLAN nor a bridge" in findings[1].detail
    assert all(f.conversion is None for f in findings)


# --- the kernel command line -----------------------------------------------------------------

def test_net_ifnames_on_every_kind_of_kernel_line():
    res = netmap.fix_kernel_names(GRUB_CFG, "/boot/grub/grub.cfg")
    assert "root=UUID=0d0e ro quiet net.ifnames=0\n" in res.text
    assert [(f.kind, f.line, f.before, f.after) for f in res.fixes] == [
        (FixKind.NET_KERNEL_ARG, 2, "(none)", "net.ifnames=0")]
    res = netmap.fix_kernel_names(DEFAULT_GRUB, "/etc/default/grub")
    assert res.text.splitlines() == ['GRUB_DEFAULT=0', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
                                     'GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0"']
    assert netmap.fix_kernel_names('GRUB_CMDLINE_LINUX=""\n', "/etc/default/grub").text == 'GRUB_CMDLINE_LINUX="net.ifnames=0"\n'
    res = netmap.fix_kernel_names("kernel /vmlinuz ro root=/dev/md0 net.ifnames=1\n", "/boot/grub/menu.lst")
    assert res.text == "kernel /vmlinuz ro root=/dev/md0 net.ifnames=0\n" and res.fixes[0].before == "net.ifnames=1"
    bls = "title Rocky Linux\nlinux /vmlinuz-5.14\noptions root=UUID=1 ro crashkernel=auto\n"
    # a BLS entry: the options line, never the linux line (the kernel's path only)
    assert netmap.fix_kernel_names(bls, "/boot/loader/entries/x.conf").text == bls.replace(
        "crashkernel=auto", "crashkernel=auto net.ifnames=0")
    kernelopts = "title RHEL 8\noptions $kernelopts $tuned_params\n"
    assert not netmap.fix_kernel_names(kernelopts, "/boot/loader/entries/y.conf").changed
    assert netmap.fix_kernel_names("root=UUID=1 ro\n", "/etc/kernel/cmdline").text == "root=UUID=1 ro net.ifnames=0\n"
    # grubenv stays a 1024-byte block: the padding gives way
    env = "# GRUB Environment Block\nkernelopts=root=UUID=1 ro\n"
    env += "#" * (1024 - len(env))
    res = netmap.fix_kernel_names(env, "/boot/grub2/grubenv")
    assert len(res.text) == 1024 and "kernelopts=root=UUID=1 ro net.ifnames=0\n" in res.text
    # already there: nothing to do
    assert not netmap.fix_kernel_names(res.text, "/boot/grub2/grubenv").changed


# --- UEFI: the removable-media path -------------------------------------------------------------

def _esp(dirs: dict[str, dict[str, bytes]]) -> EspLoaders:
    files = {f"/boot/efi/EFI/{d}/{f}": data.decode() for d, fs in dirs.items() for f, data in fs.items()}
    return esp.read_esp(DictFiles(files))


def test_grub_only_in_the_distribution_directory():
    e = _esp({"debian": {"grubx64.efi": b"grub"}})
    p = esp.removable_plan(e, ["debian"])
    assert (p.source, p.loader, p.copies, p.set_aside) == (
        "EFI/debian", "grubx64.efi", [("EFI/debian/grubx64.efi", "EFI/BOOT/BOOTX64.EFI")], None)
    assert p.found == "no boot loader (nothing at \\EFI\\BOOT\\BOOTX64.EFI)"
    src = SourceOS(esp=e)
    src.os.id = "debian"
    src.firmware = src.firmware.__class__("uefi")
    (f,) = readiness.esp_findings(src)
    assert (f.id, f.severity) == ("uefi-removable-loader", "high")
    assert f.conversion == "copy \\EFI\\debian\\grubx64.efi to \\EFI\\BOOT\\BOOTX64.EFI"


def test_shim_goes_first_with_grub_and_the_fallback_beside_it():
    # RHEL: shim, grub, MokManager and the fallback with the BOOTX64.CSV it reads; an older
    # loader at the removable path is set aside, not overwritten
    e = _esp({"redhat": {"shimx64.efi": b"shim", "grubx64.efi": b"grub", "mmx64.efi": b"mm",
                         "fbx64.efi": b"fb", "BOOTX64.CSV": b"csv"},
              "BOOT": {"BOOTX64.EFI": b"an old shim"}})
    p = esp.removable_plan(e, ["rhel"])
    assert p.copies == [("EFI/redhat/shimx64.efi", "EFI/BOOT/BOOTX64.EFI"), ("EFI/redhat/grubx64.efi", "EFI/BOOT/grubx64.efi"),
                        ("EFI/redhat/mmx64.efi", "EFI/BOOT/mmx64.efi"), ("EFI/redhat/fbx64.efi", "EFI/BOOT/fbx64.efi")]
    assert p.set_aside == "EFI/BOOT/BOOTX64.EFI.coldclone-old"
    assert p.found == "another loader at \\EFI\\BOOT\\BOOTX64.EFI, not this OS's"
    # without the CSV the fallback has nothing to restore: shim loads grub beside it
    e = _esp({"debian": {"shimx64.efi": b"shim", "grubx64.efi": b"grub", "fbx64.efi": b"fb"}})
    assert [dst for _, dst in esp.removable_plan(e, ["debian"]).copies] == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi"]


def test_nothing_to_do_when_the_removable_path_is_the_same_loader_and_ambiguity_is_said():
    e = _esp({"debian": {"grubx64.efi": b"grub"}, "BOOT": {"BOOTX64.EFI": b"grub"}})
    assert esp.removable_plan(e, ["debian"]).copies == []
    two = _esp({"ubuntu": {"grubx64.efi": b"u"}, "centos": {"grubx64.efi": b"c"}})
    p = esp.removable_plan(two, ["debian"])
    assert p.copies == [] and "loaders of 2 systems (centos, ubuntu)" in p.problem


def test_the_conversion_rereads_the_network_and_says_when_the_primary_kept_its_old_name():
    from agent.server.convert.convert import check_network

    plan = netconfig.plan(netconfig.read_network(debian()))
    # the primary's file mapped: eth0 is the primary now
    mapped = netmap.map_interfaces(INTERFACES_STATIC, "/etc/network/interfaces", roles(netconfig.read_network(debian())))
    assert check_network(debian({"/etc/network/interfaces": mapped.text}), plan) is None
    # a file no fix-up reached still configures ens3
    problem = check_network(debian(), plan)
    assert problem.startswith("after the fix-ups the guest's primary interface is ens3, not eth0; "
                              "/etc/network/interfaces still configure(s) ens3")

