"""The source server's network, as one typed model: which interfaces its OS configures (in
whichever style: ifupdown, RHEL ifcfg, NetworkManager keyfiles, netplan, systemd-networkd),
their addresses, gateway and DNS, which one carries the default route (the primary), and how
each is bound to the old hardware (a MAC in a udev rule, HWADDR=, mac-address=, a netplan or
networkd match, or a name derived from the PCI slot or onboard index).

On a cloud instance the NIC is a virtio device with a new MAC in another PCI slot, so every
such binding breaks. `plan()` says what the conversion does about it, the same answer for the
agent's readiness report (the prediction) and for coldclone-convert (the fix-ups), so the two
cannot disagree: the primary's configuration moves to the name the first virtio NIC really
gets (`eth0`, with `net.ifnames=0` on the kernel line: the kernel's own name, independent of
PCI slot and MAC, honoured by udev in the initramfs and in the root alike); bonds, VLANs and
bridges over old NICs become that plain interface with their addresses; the other interfaces'
configurations are disabled (a new instance has one NIC until more ports are attached).

Read through a FileSource (network.py), so the agent's mounted tree and the conversion's
libguestfs appliance use the same code.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, field

from . import grub, network
from .model import (HARDWARE_NAME, NAMES_ARG, PRIMARY_NAME, Binding, BindingKind, Iface, IfaceKind,  # noqa: F401
                    NetStyle, NetworkConfig)   # NAMES_ARG: netconfig.NAMES_ARG for readiness and the converter
from .network import FileSource


@dataclass
class NetworkPlan:
    """What conversion does to the guest's network (computed from the config alone: the same
    for the readiness prediction and the conversion)."""

    primary: Iface | None = None
    new_name: str = PRIMARY_NAME
    kernel_arg: bool = False            # put net.ifnames=0 on the kernel lines
    rename: bool = False                # move the primary's configuration to new_name
    flattened: list[str] = field(default_factory=list)  # the bond/VLAN/bridge chain made plain
    members: list[str] = field(default_factory=list)    # their member/parent NICs, disabled
    secondaries: list[str] = field(default_factory=list)  # other interfaces, disabled
    problems: list[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.kernel_arg or self.rename or self.flattened or self.members or self.secondaries)

    @property
    def disabled(self) -> list[str]:
        return self.members + self.secondaries


# --- parsing helpers ----------------------------------------------------------------------------

def prefix_of(netmask: str | None) -> int | None:
    if not netmask:
        return None
    if netmask.isdigit():
        return int(netmask)
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    except ValueError:
        return None


def cidr(address: str, prefix: int | str | None) -> str:
    return address if "/" in address or prefix in (None, "") else f"{address}/{prefix}"


def _words(value: str | None) -> list[str]:
    return [w for w in re.split(r"[\s,;]+", value or "") if w]


def _yes(value: str | None, default: bool = True) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().strip("\"'").lower() in ("yes", "true", "1", "on")


def _mac(value: str | None) -> str | None:
    return value.strip().lower() if value and value.strip() else None


# --- ifupdown ---------------------------------------------------------------------------------

_DEFAULT_ROUTE = re.compile(r"\broute\s+add\s+(?:-net\s+)?(?:default|0\.0\.0\.0(?:/0)?)\b.*?\b(?:via|gw)\s+(\S+)")
_ROUTE_CMD = re.compile(r"\broute\s+add\b")


def from_ifupdown(stanzas) -> list[Iface]:
    out: dict[tuple[str, str], Iface] = {}
    for st in stanzas:
        if st.family not in ("inet", "inet6"):
            continue
        o = st.options
        key = (st.path, st.name)
        iface = out.get(key)
        if iface is None:
            iface = out[key] = Iface(name=st.name, style=NetStyle.IFUPDOWN, path=st.path, line=st.line,
                                     onboot=st.auto)
        if st.family == "inet":
            iface.method = {"static": "static", "dhcp": "dhcp", "manual": "manual"}.get(st.method, st.method)
        elif iface.method == "none":
            iface.method = "static" if st.method == "static" else "dhcp" if st.method in ("auto", "dhcp") else st.method
        if o.get("address"):
            iface.addresses.append(cidr(o["address"], prefix_of(o.get("netmask"))))
        if o.get("gateway") and st.family == "inet":
            iface.gateway = o["gateway"]
        iface.dns += [w for w in _words(o.get("dns-nameservers")) if w not in iface.dns]
        for no, k, value in st.option_lines:
            if k in ("up", "post-up", "pre-up"):
                m = _DEFAULT_ROUTE.search(value)
                if m:
                    iface.gateway = iface.gateway or m.group(1)
                elif _ROUTE_CMD.search(value):
                    iface.routes.append(value)
        slaves = _words(o.get("bond-slaves") or o.get("slaves"))
        if slaves and slaves != ["none"]:
            iface.kind, iface.members = IfaceKind.BOND, slaves
        elif any(k.startswith("bond-") or k.startswith("bond_") for k in o) and ("bond-master" not in o):
            iface.kind = IfaceKind.BOND
        if o.get("bond-master"):
            iface.master = o["bond-master"]
        ports = _words(o.get("bridge_ports") or o.get("bridge-ports"))
        if ports:
            iface.kind = IfaceKind.BRIDGE
            iface.members = [p for p in ports if p != "none"]
        raw = o.get("vlan-raw-device") or o.get("vlan_raw_device")
        m = re.fullmatch(r"(.+)\.(\d+)", st.name) or re.fullmatch(r"vlan(\d+)", st.name)
        if raw or (m and "." in st.name):
            iface.kind = IfaceKind.VLAN
            iface.parent = raw or m.group(1)
            iface.vlan_id = int(m.group(2)) if m and m.lastindex == 2 else _int(o.get("vlan-id"))
        if o.get("hwaddress"):
            iface.mac = _mac(o["hwaddress"].split()[-1])
    # bridge ports and bond slaves named in the master's stanza have no bond-master line
    for iface in out.values():
        for member in iface.members:
            for other in out.values():
                if other.name == member and other.master is None:
                    other.master = iface.name
    return list(out.values())


def _int(value) -> int | None:
    try:
        return int(str(value).strip().strip("\"'"))
    except (TypeError, ValueError):
        return None


# --- RHEL ifcfg -------------------------------------------------------------------------------

def from_ifcfg(cfgs) -> list[Iface]:
    out = []
    for c in cfgs:
        v = c.values
        typ = (v.get("TYPE") or "").lower()
        kind = IfaceKind.ETHERNET
        if typ == "bond" or v.get("BONDING_MASTER", "").lower() == "yes" or v.get("BONDING_OPTS"):
            kind = IfaceKind.BOND
        elif typ == "bridge":
            kind = IfaceKind.BRIDGE
        elif typ == "vlan" or _yes(v.get("VLAN"), False):
            kind = IfaceKind.VLAN
        elif typ in ("team", "infiniband") or v.get("TEAM_CONFIG") or typ not in ("", "ethernet"):
            kind = IfaceKind.OTHER
        boot = c.bootproto
        addrs = []
        for sfx in ("", "0", "1", "2", "3"):
            a = v.get(f"IPADDR{sfx}")
            if a:
                addrs.append(cidr(a, v.get(f"PREFIX{sfx}") or prefix_of(v.get(f"NETMASK{sfx}"))))
        method = "dhcp" if boot in ("dhcp", "bootp") else "static" if addrs else "manual"
        name = c.device or ""
        iface = Iface(name=name, style=NetStyle.IFCFG, path=c.path, kind=kind, method=method,
                      addresses=addrs, gateway=v.get("GATEWAY") or v.get("GATEWAY0") or None,
                      dns=[v[k] for k in ("DNS1", "DNS2", "DNS3") if v.get(k)],
                      onboot=_yes(v.get("ONBOOT")), master=v.get("MASTER") or v.get("BRIDGE") or None,
                      mac=_mac(c.hwaddr))
        if kind is IfaceKind.VLAN:
            m = re.fullmatch(r"(.+)\.(\d+)", name)
            iface.parent = v.get("PHYSDEV") or (m.group(1) if m else None)
            iface.vlan_id = _int(v.get("VLAN_ID")) or (int(m.group(2)) if m else None)
        out.append(iface)
    for iface in out:
        if iface.kind in (IfaceKind.BOND, IfaceKind.BRIDGE):
            iface.members = [o.name for o in out if o.master == iface.name]
    return out


# --- NetworkManager keyfiles -------------------------------------------------------------------

def parse_ini(text: str) -> list[tuple[int, str, str, str]]:
    """(line, section, key, value) of an INI file (keyfiles, systemd units): repeated keys and
    sections kept, comments and blank lines left out."""
    out, section = [], ""
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if sep:
            out.append((no, section, key.strip(), value.strip()))
    return out


def _nm_get(entries, section: str | tuple[str, ...], key: str) -> str | None:
    sections = (section,) if isinstance(section, str) else section
    return next((v for _, s, k, v in entries if s in sections and k == key), None)


NM_TYPES = {"ethernet": IfaceKind.ETHERNET, "802-3-ethernet": IfaceKind.ETHERNET, "bond": IfaceKind.BOND,
            "vlan": IfaceKind.VLAN, "bridge": IfaceKind.BRIDGE}


def from_nm(conns: list[tuple[object, str]]) -> list[Iface]:
    out: list[Iface] = []
    ids: dict[str, str] = {}        # connection id / uuid / interface -> interface name
    for conn, text in conns:
        e = parse_ini(text)
        typ = conn.type or "ethernet"
        if typ in ("loopback", "wifi", "802-11-wireless") or conn.interface_name == "lo":
            continue
        addresses, gateway = network.parse_nm_ipv4(text)
        method = {"manual": "static", "auto": "dhcp", "disabled": "none", "link-local": "manual"}.get(
            conn.ipv4_method or "auto", conn.ipv4_method or "auto")
        iface = Iface(name=conn.interface_name or conn.id or posixpath.basename(conn.path), style=NetStyle.NM,
                      path=conn.path, kind=NM_TYPES.get(typ, IfaceKind.OTHER), method=method,
                      addresses=addresses, gateway=gateway,
                      dns=_words(_nm_get(e, "ipv4", "dns")),
                      onboot=_yes(_nm_get(e, "connection", "autoconnect")),
                      master=_nm_get(e, "connection", "master") if _nm_get(e, "connection", "slave-type") else None,
                      mac=conn.mac_address, named=bool(conn.interface_name))
        if iface.kind is IfaceKind.VLAN:
            iface.parent = _nm_get(e, "vlan", "parent")
            iface.vlan_id = _int(_nm_get(e, "vlan", "id"))
            iface.named = True
        for key in (conn.id, _nm_get(e, "connection", "uuid"), iface.name):
            if key:
                ids[key] = iface.name
        out.append(iface)
    # members name their master, and VLANs their parent, by interface name, id or uuid
    for iface in out:
        if iface.master:
            iface.master = ids.get(iface.master, iface.master)
        if iface.parent:
            iface.parent = ids.get(iface.parent, iface.parent)
    for iface in out:
        if iface.kind in (IfaceKind.BOND, IfaceKind.BRIDGE):
            iface.members = [o.name for o in out if o.master == iface.name]
    return out


# --- netplan ----------------------------------------------------------------------------------

NETPLAN_DIRS = ("/lib/netplan", "/run/netplan", "/etc/netplan")
NETPLAN_SECTIONS = {"ethernets": IfaceKind.ETHERNET, "bonds": IfaceKind.BOND, "vlans": IfaceKind.VLAN,
                    "bridges": IfaceKind.BRIDGE}


def netplan_files(fs: FileSource) -> list[str]:
    """The YAML files netplan reads, in its order (later directories override earlier ones
    file by file)."""
    chosen: dict[str, str] = {}
    for folder in NETPLAN_DIRS:
        for name in fs.listdir(folder):
            if name.endswith(".yaml"):
                chosen[name] = f"{folder}/{name}"
    return [chosen[n] for n in sorted(chosen)]


def load_yaml(text: str):
    import yaml

    return yaml.safe_load(text)


def _netplan_routes(entry: dict) -> tuple[str | None, list[str]]:
    gw = entry.get("gateway4")
    routes = []
    for r in entry.get("routes") or []:
        if not isinstance(r, dict):
            continue
        to = str(r.get("to", ""))
        if to in ("default", "0.0.0.0/0"):
            gw = gw or r.get("via")
        elif r.get("via"):
            routes.append(f"{to} via {r.get('via')}")
    return (str(gw) if gw else None), routes


def from_netplan(docs: list[tuple[str, dict]], problems: list[str]) -> tuple[list[Iface], list[Binding]]:
    ifaces: dict[str, Iface] = {}
    bindings = []
    for path, doc in docs:
        net = doc.get("network") if isinstance(doc, dict) else None
        if not isinstance(net, dict):
            continue
        for section, kind in NETPLAN_SECTIONS.items():
            for key, entry in (net.get(section) or {}).items():
                entry = entry if isinstance(entry, dict) else {}
                key = str(key)
                match = entry.get("match") if isinstance(entry.get("match"), dict) else {}
                name = str(entry.get("set-name") or match.get("name") or key)
                mac = _mac(str(match["macaddress"])) if match.get("macaddress") else None
                named = not (match and not match.get("name") and not entry.get("set-name") and not mac) \
                    and not any(ch in name for ch in "*?[")
                gateway, routes = _netplan_routes(entry)
                addrs = [str(a) for a in entry.get("addresses") or [] if isinstance(a, (str, int))]
                ns = entry.get("nameservers") if isinstance(entry.get("nameservers"), dict) else {}
                dhcp = _yes(str(entry.get("dhcp4")), False)
                iface = ifaces.get(key) or Iface(name=name, style=NetStyle.NETPLAN, path=path, kind=kind)
                iface.path, iface.kind, iface.named = path, kind, named
                iface.method = "dhcp" if dhcp else "static" if addrs else "manual"
                iface.addresses = addrs or iface.addresses
                iface.gateway = gateway or iface.gateway
                iface.routes = routes or iface.routes
                iface.dns = [str(a) for a in ns.get("addresses") or []] or iface.dns
                iface.mac = mac or iface.mac
                if kind in (IfaceKind.BOND, IfaceKind.BRIDGE):
                    iface.members = [str(i) for i in entry.get("interfaces") or []]
                if kind is IfaceKind.VLAN:
                    iface.parent, iface.vlan_id = entry.get("link"), _int(entry.get("id"))
                ifaces[key] = iface
                if mac:
                    bindings.append(Binding(BindingKind.NETPLAN_MATCH, path, None, mac, name,
                                            f"{section}.{key}: match macaddress {mac}"
                                            + (f", set-name {entry['set-name']}" if entry.get("set-name") else "")))
    # bonds/bridges list their members by the netplan id; the model uses interface names
    names = {k: i.name for k, i in ifaces.items()}
    for iface in ifaces.values():
        iface.members = [names.get(m, m) for m in iface.members]
        if iface.parent:
            iface.parent = names.get(iface.parent, iface.parent)
        for m in iface.members:
            for other in ifaces.values():
                if other.name == m:
                    other.master = iface.name
    return list(ifaces.values()), bindings


# --- systemd-networkd -------------------------------------------------------------------------

NETWORKD_DIRS = ("/usr/lib/systemd/network", "/lib/systemd/network", "/run/systemd/network",
                 "/etc/systemd/network")


def networkd_files(fs: FileSource, suffix: str) -> list[str]:
    chosen: dict[str, str] = {}
    for folder in NETWORKD_DIRS:
        for name in fs.listdir(folder):
            if name.endswith(suffix):
                chosen[name] = f"{folder}/{name}"
    # the system's own defaults (99-default.link, 80-*.network of the distribution) bind nothing
    return [chosen[n] for n in sorted(chosen) if chosen[n].startswith(("/etc/", "/run/"))]


def from_networkd(fs: FileSource, problems: list[str]) -> tuple[list[Iface], list[Binding]]:
    ifaces, bindings = [], []
    for path in networkd_files(fs, ".link"):
        e = parse_ini(fs.read(path) or "")
        mac = _nm_get(e, "Match", "MACAddress") or _nm_get(e, "Match", "PermanentMACAddress")
        name = _nm_get(e, "Link", "Name")
        if mac:
            line = next((no for no, s, k, _ in e if s == "Match" and k in ("MACAddress", "PermanentMACAddress")), None)
            bindings.append(Binding(BindingKind.NETWORKD_MATCH, path, line, _mac(mac.split()[0]), name,
                                    f"[Match] MACAddress={mac}" + (f" -> [Link] Name={name}" if name else "")))
    for path in networkd_files(fs, ".netdev"):
        e = parse_ini(fs.read(path) or "")
        kind = (_nm_get(e, "NetDev", "Kind") or "").lower()
        name = _nm_get(e, "NetDev", "Name")
        problems.append(f"{path}: a systemd-networkd {kind or 'virtual'} device {name or ''} (.netdev) is "
                        f"not mapped: on the instance make it the plain interface by hand".replace("  ", " "))
    for path in networkd_files(fs, ".network"):
        e = parse_ini(fs.read(path) or "")
        names = _words(_nm_get(e, "Match", "Name"))
        mac = _nm_get(e, "Match", "MACAddress")
        if mac:
            line = next((no for no, s, k, _ in e if s == "Match" and k == "MACAddress"), None)
            bindings.append(Binding(BindingKind.NETWORKD_MATCH, path, line, _mac(mac.split()[0]),
                                    names[0] if names else None, f"[Match] MACAddress={mac}"))
        if any(n == "lo" for n in names):
            continue
        dhcp = (_nm_get(e, "Network", "DHCP") or "no").lower()
        addrs = [v for _, s, k, v in e if (s, k) in (("Network", "Address"), ("Address", "Address"))]
        gws = [v for _, s, k, v in e if (s, k) in (("Network", "Gateway"), ("Route", "Gateway"))]
        named = bool(names) and not any(ch in n for n in names for ch in "*?[")
        iface = Iface(name=names[0] if names else posixpath.basename(path), style=NetStyle.NETWORKD, path=path,
                      method="dhcp" if dhcp in ("yes", "ipv4", "true", "both") else "static" if addrs else "manual",
                      addresses=addrs, gateway=gws[0] if gws else None,
                      dns=[w for _, s, k, v in e if (s, k) == ("Network", "DNS") for w in _words(v)],
                      mac=_mac(mac.split()[0]) if mac else None, named=named or bool(mac),
                      master=_nm_get(e, "Network", "Bond") or _nm_get(e, "Network", "Bridge"))
        ifaces.append(iface)
    return ifaces, bindings


# --- the whole server ------------------------------------------------------------------------

# udev's predictable interface naming (80-net-name-slot.rules in systemd 197-208)
NAMING_RULES = tuple(f"{d}/{n}" for d in ("/usr/lib/udev/rules.d", "/lib/udev/rules.d")
                     for n in ("80-net-setup-link.rules", "80-net-name-slot.rules"))
BOOT_CONFIGS = tuple("/" + rel for rel in grub.GRUB_CONFIGS) + ("/etc/kernel/cmdline",)
BLS_DIR = "/boot/loader/entries"


def kernel_words(fs: FileSource) -> list[str]:
    """net.ifnames= and biosdevname= on the OS's kernel lines (grub, BLS entries, grubenv)."""
    out: list[str] = []
    texts = [fs.read(p) or "" for p in BOOT_CONFIGS]
    texts += [fs.read(f"{BLS_DIR}/{n}") or "" for n in fs.listdir(BLS_DIR) if n.endswith(".conf")]
    texts.append(fs.read("/boot/grub2/grubenv") or "")
    for text in texts:
        for m in re.finditer(r"(?<![\w.-])((?:net\.ifnames|biosdevname)=[^\s\"']+)", text):
            line_start = text.rfind("\n", 0, m.start()) + 1
            if text[line_start:m.start()].lstrip().startswith("#"):
                continue
            if m.group(1) not in out:
                out.append(m.group(1))
    return out


def read_resolv_conf(fs: FileSource) -> list[str]:
    out = []
    for raw in (fs.read("/etc/resolv.conf") or "").splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and words[1] not in out:
            out.append(words[1])
    return out


def read_network(fs: FileSource) -> NetworkConfig:
    """The network of the OS whose files fs reads."""
    cfg = NetworkConfig()
    ifupdown = from_ifupdown(network.read_interfaces_from(fs))
    ifcfg = from_ifcfg(network.read_ifcfg_from(fs))
    nm = from_nm(network.read_nm_texts(fs))
    docs = []
    for path in netplan_files(fs):
        try:
            doc = load_yaml(fs.read(path) or "")
        except Exception as e:  # yaml.YAMLError: a file netplan itself would refuse
            cfg.problems.append(f"{path}: not valid YAML ({str(e).splitlines()[0]}); netplan would "
                                f"refuse it too: fix it by hand")
            continue
        docs.append((path, doc))
    netplan, np_bindings = from_netplan(docs, cfg.problems)
    networkd, nd_bindings = from_networkd(fs, cfg.problems)
    for style, found in ((NetStyle.IFUPDOWN, ifupdown), (NetStyle.IFCFG, ifcfg), (NetStyle.NM, nm),
                         (NetStyle.NETPLAN, netplan), (NetStyle.NETWORKD, networkd)):
        if found:
            cfg.styles.append(style)
            cfg.interfaces += found
    cfg.kernel_args = kernel_words(fs)
    cfg.naming_rules = any(fs.read(p) is not None for p in NAMING_RULES)
    cfg.nameservers = read_resolv_conf(fs)
    cfg.bindings = _bindings(cfg, network.read_net_rules_from(fs)) + np_bindings + nd_bindings
    _choose_primary(cfg)
    for i in cfg.interfaces:
        if i.kind is IfaceKind.OTHER:
            cfg.problems.append(f"{i.path}: {i.name} is neither an Ethernet NIC, a bond, a VLAN nor a "
                                f"bridge (team, InfiniBand, tunnel ...): not mapped, configure it by hand")
    return cfg


def _bindings(cfg: NetworkConfig, rules) -> list[Binding]:
    out = [Binding(BindingKind.UDEV_RULE, network.NET_RULES, r.line, r.mac, r.name, f"{r.mac} -> {r.name}")
           for r in rules if r.mac]
    for i in cfg.interfaces:
        if i.mac and i.style is NetStyle.IFCFG:
            out.append(Binding(BindingKind.IFCFG_HWADDR, i.path, None, i.mac, i.name, f"HWADDR={i.mac}"))
        elif i.mac and i.style is NetStyle.NM:
            out.append(Binding(BindingKind.NM_MAC, i.path, None, i.mac, i.name, f"mac-address={i.mac}"))
        elif i.mac and i.style is NetStyle.IFUPDOWN:
            out.append(Binding(BindingKind.INTERFACES_HWADDRESS, i.path, i.line, i.mac, i.name,
                               f"iface {i.name}: hwaddress {i.mac}"))
    seen = set()
    for i in cfg.interfaces:
        if i.named and HARDWARE_NAME.match(i.name) and i.name not in seen:
            seen.add(i.name)
            out.append(Binding(BindingKind.HARDWARE_NAME, i.path, i.line, None, i.name,
                               f"{i.name}: a name derived from the old hardware's slot or onboard index"))
    return out


def _choose_primary(cfg: NetworkConfig) -> None:
    """The interface with the default route: a configured gateway, else the first interface
    brought up by DHCP (which brings the route), else the only one with an address."""
    tops = [i for i in cfg.interfaces if i.onboot and not i.master and i.kind is not IfaceKind.OTHER]
    with_gw = [i for i in tops if i.gateway]
    if with_gw:
        cfg.primary, cfg.primary_why = with_gw[0].name, f"it has the default route (gateway {with_gw[0].gateway})"
        others = sorted({i.name for i in with_gw[1:] if i.name != with_gw[0].name})
        if others:
            cfg.problems.append(f"more than one interface has a default gateway ({', '.join([with_gw[0].name] + others)}):"
                                f" {with_gw[0].name} (the first) is the primary; check the others' routes by hand")
        return
    dhcp = [i for i in tops if i.method == "dhcp"]
    if dhcp:
        cfg.primary, cfg.primary_why = dhcp[0].name, "it is configured by DHCP, which brings the default route"
        return
    static = [i for i in tops if i.static]
    if static:
        cfg.primary, cfg.primary_why = static[0].name, "no interface has a default route; it is the first with an address"
        cfg.problems.append(f"no interface has a default route: {static[0].name} was taken as the primary; "
                            f"check the routes of the instance")


def chain(cfg: NetworkConfig, name: str) -> list[Iface]:
    """The primary and what it stands on: a VLAN's parent, a bond's or bridge's members, down
    to the NICs (configurations, in order, each name once)."""
    out: list[Iface] = []
    todo, seen = [name], set()
    while todo:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.add(n)
        found = cfg.named(n)
        out += found
        for i in found:
            todo += ([i.parent] if i.parent else []) + list(i.members)
        todo += [i.name for i in cfg.interfaces if i.master == n]
    return out


def plan(cfg: NetworkConfig) -> NetworkPlan:
    """What conversion does: the primary's configuration on the first virtio NIC, named eth0
    whatever its slot (net.ifnames=0), bonds/VLANs/bridges under it made plain, the rest
    disabled. The same plan predicts (readiness) and applies (coldclone-convert)."""
    p = NetworkPlan(problems=list(cfg.problems))
    prim = cfg.primary_iface
    if prim is None:
        return p
    p.primary = prim
    under = chain(cfg, prim.name)
    chain_names = list(dict.fromkeys(i.name for i in under))
    named = any(i.named for i in cfg.named(prim.name))
    if prim.kind in (IfaceKind.VLAN, IfaceKind.BOND, IfaceKind.BRIDGE):
        p.flattened = [n for n in chain_names if any(i.kind in (IfaceKind.VLAN, IfaceKind.BOND, IfaceKind.BRIDGE)
                                                      for i in cfg.named(n))]
        p.members = [n for n in chain_names if n not in p.flattened]
        named = True
    p.rename = named and prim.name != p.new_name
    # Only a configuration bound to a name needs the name to be predictable; a keyfile that
    # matches any NIC comes up on whatever the virtio NIC is called.
    p.kernel_arg = named and cfg.predictable_names
    # every other configuration that comes up at boot: one for a NIC the instance lacks fails
    # or holds up the boot, and one bound only by a MAC (its binding gone) or matching any NIC
    # would compete with the primary's for the virtio NIC
    p.secondaries = list(dict.fromkeys(i.name for i in cfg.interfaces
                                       if i.name not in chain_names and i.onboot
                                       and i.kind is not IfaceKind.OTHER))
    return p
