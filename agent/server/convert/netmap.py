"""The conversion's network mapping, as pure functions on a guest file's text (like fixes.py):
each carries out its part of guestos.netconfig.plan() in one configuration style and returns
a FixResult, one Fix per change, lines kept intact (a changed line is edited in place, a
disabled one commented out with a note), so a diff of the guest file shows exactly the fixes.

What they do (docs/conversion.md, "Network identity"): the primary interface's configuration
is moved to `eth0`, the name the first virtio NIC gets under `net.ifnames=0` whatever its PCI
slot and MAC (fix_kernel_names puts that on every kernel line); with --network dhcp (the
default, Neutron's) it switches to DHCP, with --network keep its addresses, routes and DNS stay;
a bond, VLAN or bridge under it becomes that plain interface with its addresses; the
configurations of the other interfaces are disabled, each with a note. The bindings to the old
MACs (udev rules, HWADDR=, mac-address=, hwaddress) are fixes.py's; netplan's and networkd's
MAC matches are here because they are part of an entry this module rewrites anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ...guestos import netconfig
from ...guestos.netconfig import NAMES_ARG, NetworkPlan
from .fixes import MARK, _content_lines, _disable, _disable_lines, ini_lines
from ...choices import ConvertNetwork
from .model import Fix, FixKind, FixResult


@dataclass(frozen=True)
class Roles:
    """Who is who in one plan: the primary (renamed to new), the virtual devices flattened into
    it, their member NICs and the secondary interfaces (both disabled)."""

    plan: NetworkPlan
    policy: ConvertNetwork

    @property
    def primary(self) -> str | None:
        return self.plan.primary.name if self.plan.primary else None

    @property
    def new(self) -> str:
        return self.plan.new_name

    def role(self, name: str | None) -> str | None:
        if name is None:
            return None
        if name == self.primary:
            return "primary"
        if name in self.plan.flattened or name in self.plan.members:
            return "member"
        if name in self.plan.secondaries:
            return "secondary"
        return None

    @property
    def flatten(self) -> bool:
        return bool(self.plan.flattened)

    @property
    def to_dhcp(self) -> bool:
        return self.policy is ConvertNetwork.DHCP and self.plan.primary is not None \
            and self.plan.primary.method != "dhcp"

    def disable_kind(self, name: str) -> FixKind:
        return FixKind.NET_MEMBER_DISABLED if self.role(name) == "member" else FixKind.NET_DISABLED

    def disable_why(self, name: str) -> str:
        if self.role(name) == "member":
            return (f"{name} is part of {self.primary}, which becomes the plain {self.new}: the "
                    f"instance has no such NIC")
        return (f"{name} was a NIC of the old server: a new instance has one NIC until more Neutron "
                f"ports are attached, and a configuration for a NIC it lacks fails at boot")

    @property
    def rename_why(self) -> str:
        return (f"the first virtio NIC is {self.new} whatever its PCI slot (net.ifnames=0); "
                f"{self.primary} was the old hardware's name")

    @property
    def dhcp_why(self) -> str:
        return f"--network dhcp: the cloud's DHCP gives {self.new} its address, route and DNS"

    @property
    def flatten_why(self) -> str:
        return (f"{self.primary} becomes the plain {self.new} with its addresses: the instance has "
                f"one virtio NIC on an untagged network, not the old NICs and switch ports")


def _line_end(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


# --- ifupdown ------------------------------------------------------------------------------

_STATIC_OPTS = ("address", "netmask", "gateway", "broadcast", "network", "pointopoint", "metric",
                "dns-nameservers", "dns-search", "dns-domain")
_FLATTEN_OPTS = re.compile(r"^(bond[-_]\S+|slaves|bridge[-_]\S+|vlan[-_]raw[-_]device|vlan[-_]id)$")
_ROUTE_CMD = re.compile(r"\broute\s+(add|del)\b")


def _physical_groups(text: str):
    """Physical lines grouped into logical ones (a trailing backslash continues a line):
    (first line number, [physical lines with endings], logical text)."""
    group, start = [], None
    for no, line in enumerate(text.splitlines(keepends=True), 1):
        if start is None:
            start = no
        group.append(line)
        if line.rstrip("\r\n").endswith("\\"):
            continue
        yield start, group, " ".join(g.rstrip("\r\n")[:-1] if g.rstrip("\r\n").endswith("\\")
                                     else g.rstrip("\r\n") for g in group)
        group, start = [], None
    if group:
        yield start, group, " ".join(g.rstrip("\r\n") for g in group)


def map_interfaces(text: str, path: str, roles: Roles) -> FixResult:
    """/etc/network/interfaces (and each file it sources)."""
    out, res = [], FixResult(text)
    current: tuple[str, str] | None = None      # (name, family) of the stanza we are in
    new = roles.new

    def disable(no: int, group: list[str], bare: str, kind: FixKind, why: str, note: str) -> None:
        out.extend(_disable(g, note) for g in group)
        res.fixes.append(Fix(kind, path, no, bare.strip(), f"# {MARK}: {note}: {bare.strip()}", why))

    for no, group, logical in _physical_groups(text):
        stripped = logical.split("#", 1)[0].strip()
        if not stripped:
            out += group
            continue
        words = stripped.split()
        key = words[0]
        if key == "iface" and len(words) >= 4:
            current = (words[1], words[2])
            line = "".join(group)
            if roles.role(words[1]) == "primary":
                if roles.plan.rename:
                    line = re.sub(rf"(\biface\s+){re.escape(words[1])}(?=\s)", rf"\g<1>{new}", line, count=1)
                    res.fixes.append(Fix(FixKind.NET_RENAME, path, no, f"iface {words[1]}", f"iface {new}",
                                         roles.rename_why))
                if roles.to_dhcp and words[3] == "static":
                    method = "dhcp" if words[2] == "inet" else "auto"
                    line = re.sub(rf"(\b{words[2]}\s+)static\b", rf"\g<1>{method}", line, count=1)
                    res.fixes.append(Fix(FixKind.NET_DHCP, path, no, f"{words[2]} static", f"{words[2]} {method}",
                                         roles.dhcp_why))
                out.append(line)
                continue
            out += group
            continue
        if key in ("auto", "allow-auto", "allow-hotplug") or key.startswith("allow-"):
            current = None
            names = words[1:]
            dropped = [n for n in names if roles.role(n) in ("member", "secondary")]
            kept = [new if roles.role(n) == "primary" and roles.plan.rename else n
                    for n in names if n not in dropped]
            if not dropped and kept == names:
                out += group
                continue
            if roles.plan.rename and roles.primary in names:
                res.fixes.append(Fix(FixKind.NET_RENAME, path, no, f"{key} {roles.primary}", f"{key} {new}",
                                     roles.rename_why))
            if dropped:
                kinds = {roles.disable_kind(n) for n in dropped}
                for kind in sorted(kinds, key=lambda k: k.value):
                    these = [n for n in dropped if roles.disable_kind(n) is kind]
                    why = roles.disable_why(these[0])
                    if kept:
                        res.fixes.append(Fix(kind, path, no, f"{key} {' '.join(these)}", "(left out of the line)", why))
                    else:
                        res.fixes.append(Fix(kind, path, no, stripped,
                                             f"# {MARK}: not brought up: {stripped}", why))
            if kept:
                out.append(" ".join([key] + kept) + _line_end(group[-1]))
            else:
                out += [_disable(g, "not brought up") for g in group]
            continue
        if key in ("source", "source-directory", "mapping", "rename"):
            current = None
            out += group
            continue
        if current is None or roles.role(current[0]) != "primary":
            out += group
            continue
        # an option line of the primary's stanza
        value = " ".join(words[1:])
        if roles.flatten and _FLATTEN_OPTS.match(key):
            disable(no, group, logical, FixKind.NET_FLATTEN, roles.flatten_why, "bond/VLAN/bridge of the old NICs")
            continue
        if roles.to_dhcp and (key in _STATIC_OPTS or (key in ("up", "post-up", "pre-up", "down", "post-down", "pre-down")
                                                   and _ROUTE_CMD.search(value))):
            disable(no, group, logical, FixKind.NET_DHCP, roles.dhcp_why, "static setting, DHCP now")
            continue
        old = roles.primary
        if roles.plan.rename and old and re.search(rf"(?<![\w.-]){re.escape(old)}(?![\w.-])", value):
            line = "".join(group)
            new_line = re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w.-])", new, line)
            out.append(new_line)
            res.fixes.append(Fix(FixKind.NET_RENAME, path, no, logical.strip(),
                                 " ".join(new_line.split()), roles.rename_why))
            continue
        out += group
    res.text = "".join(out)
    return res


# --- RHEL ifcfg -----------------------------------------------------------------------------

_IFCFG_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)(.*)$")
_IFCFG_STATIC = re.compile(r"^(IPADDR\d*|PREFIX\d*|NETMASK\d*|GATEWAY\d*|DNS\d+|PEERDNS|IPV4_ROUTE_METRIC)$")
_IFCFG_FLATTEN = re.compile(r"^(BONDING_OPTS|BONDING_MASTER|VLAN|VLAN_ID|PHYSDEV|REORDER_HDR|VLAN_\w+|"
                            r"STP|DELAY|BRIDGING_OPTS|TEAM_\w+)$")


def _unquote(v: str) -> str:
    v = v.split("#", 1)[0].strip() if not v.strip().startswith(("'", '"')) else v.strip()
    return v.strip("\"'")


def _value(m: re.Match, value: str, line: str) -> str:
    """The KEY=value line `m` matched, with another value (spacing and line end kept)."""
    return m.group(1) + m.group(2) + m.group(3) + value + _line_end(line)


def _edited(out: list[str], res: FixResult, path: str, no: int, bare: str, new_line: str, kind: FixKind,
            why: str) -> None:
    out.append(new_line)
    res.fixes.append(Fix(kind, path, no, bare, new_line.rstrip("\r\n"), why))


def map_ifcfg(text: str, path: str, name: str, roles: Roles) -> FixResult:
    """One ifcfg file; `name` is the interface it configures (DEVICE=, else the file name)."""
    out, res = [], FixResult(text)
    role = roles.role(name)
    if role is None:
        return res
    seen_device = seen_onboot = False
    new = roles.new
    for no, line, bare in _content_lines(text):
        m = _IFCFG_LINE.match(bare) if bare is not None else None
        if not m:
            out.append(line)
            continue
        key, value = m.group(2), _unquote(m.group(4))
        seen_device |= key == "DEVICE"
        seen_onboot |= key == "ONBOOT"
        edit = None
        if role == "primary":
            if key == "DEVICE" and roles.plan.rename and value != new:
                edit = _value(m, new, line), FixKind.NET_RENAME, roles.rename_why
            elif roles.flatten and key == "TYPE" and value.lower() in ("bond", "vlan", "bridge"):
                edit = _value(m, "Ethernet", line), FixKind.NET_FLATTEN, roles.flatten_why
            elif roles.flatten and _IFCFG_FLATTEN.match(key):
                edit = _disable(line, "bond/VLAN/bridge of the old NICs"), FixKind.NET_FLATTEN, roles.flatten_why
            elif roles.to_dhcp and key == "BOOTPROTO":
                edit = _value(m, "dhcp", line), FixKind.NET_DHCP, roles.dhcp_why
            elif roles.to_dhcp and _IFCFG_STATIC.match(key):
                edit = _disable(line, "static setting, DHCP now"), FixKind.NET_DHCP, roles.dhcp_why
        elif key == "ONBOOT" and value.lower() != "no":
            edit = _value(m, "no", line), roles.disable_kind(name), roles.disable_why(name)
        if edit is None:
            out.append(line)
        else:
            _edited(out, res, path, no, bare, *edit)
    text_out = "".join(out)
    tail = "" if not text_out or text_out.endswith("\n") else "\n"
    if role == "primary" and roles.plan.rename and not seen_device:
        text_out += f"{tail}# {MARK}: the interface it configures (the first virtio NIC)\nDEVICE={new}\n"
        res.fixes.append(Fix(FixKind.NET_RENAME, path, None, "(no DEVICE=)", f"DEVICE={new}", roles.rename_why))
    elif role in ("member", "secondary") and not seen_onboot:
        text_out += f"{tail}# {MARK}: {roles.disable_why(name)}\nONBOOT=no\n"
        res.fixes.append(Fix(roles.disable_kind(name), path, None, "(no ONBOOT=, so yes)", "ONBOOT=no",
                             roles.disable_why(name)))
    res.text = text_out
    return res


# --- NetworkManager keyfiles --------------------------------------------------------------------

_KEYVAL = re.compile(r"^(\s*)([^=\s]+)(\s*=\s*)(.*)$")
_NM_STATIC = re.compile(r"^(address(es)?\d*|gateway|dns|dns-search|route\d*|route\d+_options)$")


def map_nm_keyfile(text: str, path: str, name: str, roles: Roles) -> FixResult:
    """One keyfile; `name` is the interface it configures (netconfig's name for it)."""
    out, res = [], FixResult(text)
    role = roles.role(name)
    if role is None:
        return res
    new = roles.new
    autoconnect_seen = False
    connection_header: int | None = None
    for no, line, bare, section, header in ini_lines(text):
        if bare is None:
            out.append(line)
            continue
        if header:
            if section == "connection":
                connection_header = len(out)
            if role == "primary" and roles.flatten and section in ("bond", "vlan", "bridge", "team"):
                _edited(out, res, path, no, bare, _disable(line, "bond/VLAN/bridge of the old NICs"),
                        FixKind.NET_FLATTEN, roles.flatten_why)
            else:
                out.append(line)
            continue
        m = _KEYVAL.match(bare)
        if not m:
            out.append(line)
            continue
        key, value = m.group(2), m.group(4).strip()
        edit = None
        if role == "primary":
            if section == "connection" and key == "interface-name" and roles.plan.rename and value != new:
                edit = _value(m, new, line), FixKind.NET_RENAME, roles.rename_why
            elif section == "connection" and key == "type" and roles.flatten and value in ("bond", "vlan", "bridge"):
                edit = _value(m, "ethernet", line), FixKind.NET_FLATTEN, roles.flatten_why
            elif section in ("bond", "vlan", "bridge", "team") and roles.flatten:
                edit = _disable(line, "bond/VLAN/bridge of the old NICs"), FixKind.NET_FLATTEN, roles.flatten_why
            elif section == "ipv4" and roles.to_dhcp and key == "method" and value == "manual":
                edit = _value(m, "auto", line), FixKind.NET_DHCP, roles.dhcp_why
            elif section == "ipv4" and roles.to_dhcp and _NM_STATIC.match(key):
                edit = _disable(line, "static setting, DHCP now"), FixKind.NET_DHCP, roles.dhcp_why
        elif section == "connection" and key == "autoconnect":
            autoconnect_seen = True
            if value.lower() not in ("false", "no", "0"):
                edit = _value(m, "false", line), roles.disable_kind(name), roles.disable_why(name)
        if edit is None:
            out.append(line)
        else:
            _edited(out, res, path, no, bare, *edit)
    if role in ("member", "secondary") and not autoconnect_seen:
        insert = f"# {MARK}: {roles.disable_why(name)}\nautoconnect=false\n"
        at = connection_header + 1 if connection_header is not None else 0
        if connection_header is None:
            insert = "[connection]\n" + insert
        out.insert(at, insert)
        res.fixes.append(Fix(roles.disable_kind(name), path, None, "(autoconnect not set, so true)",
                             "autoconnect=false", roles.disable_why(name)))
    res.text = "".join(out)
    return res


# --- netplan ----------------------------------------------------------------------------------

_NETPLAN_STATIC = ("addresses", "gateway4", "gateway6", "routes", "nameservers", "routing-policy")
_NETPLAN_KEEP = ("addresses", "gateway4", "gateway6", "routes", "nameservers", "routing-policy", "dhcp4",
                 "dhcp6", "mtu", "optional", "accept-ra", "link-local", "ipv6-privacy", "critical")


def _flow(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()


def map_netplan(text: str, path: str, roles: Roles) -> FixResult:
    """One netplan YAML file, rewritten as a whole (YAML cannot be edited line by line
    safely): the original is kept beside it (see backup_name) and the new text starts with a
    comment naming it. Each change is a Fix with the entry's key and values before/after."""
    res = FixResult(text)
    try:
        doc = netconfig.load_yaml(text)
    except Exception:
        return res          # netconfig reported it as a problem (network-unmapped)
    net = doc.get("network") if isinstance(doc, dict) else None
    if not isinstance(net, dict):
        return res
    new = roles.new
    changed = False
    moved: dict = {}
    for section in ("ethernets", "bonds", "vlans", "bridges"):
        entries = net.get(section)
        if not isinstance(entries, dict):
            continue
        for key in list(entries):
            entry = entries[key] if isinstance(entries[key], dict) else {}
            match = entry.get("match") if isinstance(entry.get("match"), dict) else {}
            name = str(entry.get("set-name") or match.get("name") or key)
            role = roles.role(name)
            where = f"{section}.{key}"
            if role == "primary":
                out_entry = {k: v for k, v in entry.items() if k in _NETPLAN_KEEP}
                if match.get("macaddress"):
                    res.fixes.append(Fix(FixKind.NETPLAN_MAC, path, None, f"{where}: match {_flow(match)}"
                                         + (f", set-name {entry['set-name']}" if entry.get("set-name") else ""),
                                         f"{new}: no match, no set-name",
                                         "matches only the old NIC's MAC; the cloud's NIC has another"))
                if roles.flatten and section != "ethernets":
                    dropped = {k: v for k, v in entry.items() if k not in _NETPLAN_KEEP}
                    res.fixes.append(Fix(FixKind.NET_FLATTEN, path, None, f"{where}: {_flow(dropped)}",
                                         f"ethernets.{new}", roles.flatten_why))
                elif roles.plan.rename and key != new:
                    res.fixes.append(Fix(FixKind.NET_RENAME, path, None, where, f"ethernets.{new}", roles.rename_why))
                if roles.to_dhcp:
                    static = {k: entry[k] for k in _NETPLAN_STATIC if k in entry}
                    for k in static:
                        out_entry.pop(k, None)
                    out_entry["dhcp4"] = True
                    res.fixes.append(Fix(FixKind.NET_DHCP, path, None, f"{where}: {_flow(static)}",
                                         f"ethernets.{new}: {{dhcp4: true}}", roles.dhcp_why))
                moved = out_entry
                del entries[key]
                changed = True
            elif role in ("member", "secondary"):
                res.fixes.append(Fix(roles.disable_kind(name), path, None, f"{where}: {_flow(entry)}",
                                     f"(removed; kept in {backup_name(path)})", roles.disable_why(name)))
                del entries[key]
                changed = True
        if isinstance(entries, dict) and not entries:
            del net[section]
    if moved or (changed and roles.primary is None):
        net.setdefault("ethernets", {})
        net["ethernets"] = {new: moved, **net["ethernets"]} if moved else net["ethernets"]
    if not changed:
        return res
    import yaml

    header = (f"# {MARK}: rewritten for the cloud instance ({len(res.fixes)} change(s), listed in the "
              f"capture's manifest); the original is {backup_name(path)}\n")
    res.text = header + yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    return res


def backup_name(path: str) -> str:
    """Where a rewritten netplan file's original is kept: not *.yaml, so netplan ignores it."""
    return path + f".{MARK}-orig"


# --- systemd-networkd --------------------------------------------------------------------------

_ANY_SETTING = re.compile(r"\s*\S")


def map_networkd_link(text: str, path: str) -> FixResult:
    """A .link file matching the old NIC's MAC: every line commented out (a .link without its
    match would apply to every NIC)."""
    e = netconfig.parse_ini(text)
    if not any(s == "Match" and k in ("MACAddress", "PermanentMACAddress") for _, s, k, _ in e):
        return FixResult(text)
    return _disable_lines(text, path, FixKind.NETWORKD_MAC, _ANY_SETTING.match,
                          "names/configures the old NIC by its MAC",
                          lambda m: "matches only the old NIC's MAC; the cloud's NIC has another")


def map_networkd_network(text: str, path: str, name: str, roles: Roles) -> FixResult:
    out, res = [], FixResult(text)
    role = roles.role(name)
    new = roles.new
    network_header: int | None = None
    has_name = any(s == "Match" and k == "Name" for _, s, k, _ in netconfig.parse_ini(text))
    dhcp_set = False
    for no, line, bare, section, header in ini_lines(text):
        if bare is None:
            out.append(line)
            continue
        if header:
            if section == "Network":
                network_header = len(out)
            if role == "primary" and roles.to_dhcp and section in ("Address", "Route"):
                _edited(out, res, path, no, bare, _disable(line, "static setting, DHCP now"), FixKind.NET_DHCP,
                        roles.dhcp_why)
            else:
                out.append(line)
            continue
        m = _KEYVAL.match(bare)
        key, value = (m.group(2), m.group(4).strip()) if m else ("", "")
        if section == "Match" and key == "MACAddress":
            new_line = _disable(line, "MAC of the old hardware")
            if role == "primary" and not has_name:
                new_line += f"Name={new}{_line_end(line) or chr(10)}"
                res.fixes.append(Fix(FixKind.NET_RENAME, path, no, "(matched by MAC)", f"Name={new}", roles.rename_why))
            out.append(new_line)
            res.fixes.append(Fix(FixKind.NETWORKD_MAC, path, no, bare, new_line.splitlines()[0],
                                 "matches only the old NIC's MAC; the cloud's NIC has another"))
            continue
        if role == "primary" and m:
            edit = None
            if section == "Match" and key == "Name" and roles.plan.rename and value != new:
                edit = _value(m, new, line), FixKind.NET_RENAME, roles.rename_why
            elif roles.to_dhcp and (section in ("Address", "Route") or (section == "Network" and key in ("Address", "Gateway", "DNS"))):
                edit = _disable(line, "static setting, DHCP now"), FixKind.NET_DHCP, roles.dhcp_why
            elif roles.to_dhcp and section == "Network" and key == "DHCP":
                dhcp_set = True
                if value.lower() not in ("yes", "ipv4", "true", "both"):
                    edit = _value(m, "ipv4", line), FixKind.NET_DHCP, roles.dhcp_why
            if edit is not None:
                _edited(out, res, path, no, bare, *edit)
                continue
        out.append(line)
    if role == "primary" and roles.to_dhcp and not dhcp_set:
        if network_header is None:
            out.append("\n[Network]\n")
            network_header = len(out) - 1
        out.insert(network_header + 1, "DHCP=ipv4\n")
        res.fixes.append(Fix(FixKind.NET_DHCP, path, None, "(no DHCP=)", "DHCP=ipv4", roles.dhcp_why))
    if role in ("member", "secondary"):
        tail = "" if not out or out[-1].endswith("\n") else "\n"
        out.append(f"{tail}# {MARK}: {roles.disable_why(name)}\n[Link]\nUnmanaged=yes\n")
        res.fixes.append(Fix(roles.disable_kind(name), path, None, "(managed)", "[Link] Unmanaged=yes",
                             roles.disable_why(name)))
    res.text = "".join(out)
    return res


# --- the kernel command line ---------------------------------------------------------------------

_KERNEL_LINE = re.compile(r"^\s*(kernel|linux|linux16|linuxefi)\s")
_CMDLINE_VAR = re.compile(r"^(\s*GRUB_CMDLINE_LINUX\s*=\s*)([\"']?)(.*?)(\2)(\s*)$")
_BLS_OPTIONS = re.compile(r"^\s*options\s")
_NAMES = re.compile(r"(?<![\w.-])net\.ifnames=\S+")


def _with_names_arg(args: str) -> str:
    if _NAMES.search(args):
        return _NAMES.sub(NAMES_ARG, args)
    return (args.rstrip() + " " + NAMES_ARG) if args.strip() else NAMES_ARG


def fix_kernel_names(text: str, path: str) -> FixResult:
    """net.ifnames=0 on every kernel line of a boot configuration: grub.cfg `linux` lines, GRUB
    legacy `kernel` lines, GRUB_CMDLINE_LINUX of /etc/default/grub (kept by every update-grub),
    BLS `options` lines without $kernelopts, grubenv's kernelopts= and /etc/kernel/cmdline."""
    out, res = [], FixResult(text)
    why = ("the first virtio NIC is then eth0 whatever its PCI slot and MAC (udev keeps the "
           "kernel's name), in the initramfs and in the running system alike")
    if path == "/boot/grub2/grubenv":
        return _fix_grubenv(text, path, why)
    whole_line = path == "/etc/kernel/cmdline"
    # a BLS entry's `linux` line names the kernel only: its arguments are the `options` line
    bls = path.startswith("/boot/loader/entries/")
    for no, line, bare in _content_lines(text):
        if bare is None:
            out.append(line)
            continue
        new_bare = None
        if whole_line:
            new_bare = _with_names_arg(bare)
        elif bls:
            if _BLS_OPTIONS.match(bare) and "$kernelopts" not in bare:
                new_bare = _with_names_arg(bare)
        elif _KERNEL_LINE.match(bare):
            new_bare = _with_names_arg(bare)
        else:
            m = _CMDLINE_VAR.match(bare)
            if m:
                new_bare = m.group(1) + m.group(2) + _with_names_arg(m.group(3)) + (m.group(4) or m.group(2)) + m.group(5)
                if not m.group(2):
                    new_bare = m.group(1) + '"' + _with_names_arg(m.group(3)) + '"' + m.group(5)
        if new_bare is None or new_bare == bare:
            out.append(line)
            continue
        out.append(new_bare + _line_end(line))
        old = _NAMES.search(bare)
        res.fixes.append(Fix(FixKind.NET_KERNEL_ARG, path, no, old.group(0) if old else "(none)", NAMES_ARG, why))
    res.text = "".join(out)
    return res


def _fix_grubenv(text: str, path: str, why: str) -> FixResult:
    """grubenv is a 1024-byte block padded with '#': the padding shrinks by what is added."""
    res = FixResult(text)
    m = re.search(r"^kernelopts=(.*)$", text, re.M)
    if not m or NAMES_ARG in m.group(1):
        return res
    new_opts = _with_names_arg(m.group(1))
    grown = len(new_opts) - len(m.group(1))
    body = text[:m.start(1)] + new_opts + text[m.end(1):]
    pad = len(body) - len(body.rstrip("#"))
    if pad < grown:
        res.warnings.append(f"{path}: no room left in the 1024-byte block for {NAMES_ARG}; "
                            f"add it with grubby --update-kernel=ALL --args={NAMES_ARG} on the instance")
        return res
    res.text = body[:len(body) - grown] if grown > 0 else body
    no = text[:m.start()].count("\n") + 1
    res.fixes.append(Fix(FixKind.NET_KERNEL_ARG, path, no, "kernelopts=" + m.group(1),
                         "kernelopts=" + new_opts, why))
    return res


def chain_results(first: FixResult, then: Callable[[str], FixResult]) -> FixResult:
    """Two passes over one file (e.g. the MAC bindings, then the mapping): the second sees the
    first's text; line numbers stay those of the original, as neither adds or drops lines
    before the lines it edits (insertions go at the end or after a section header)."""
    second = then(first.text)
    return FixResult(second.text, first.fixes + second.fixes, first.warnings + second.warnings)
