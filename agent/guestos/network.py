"""Network configuration of the source OS: RHEL ifcfg files, Debian
/etc/network/interfaces, NetworkManager keyfiles, and the udev rules that pin
interface names to MAC addresses. In the cloud every MAC is new, so what is
bound to the old ones stops working."""

from __future__ import annotations

import configparser
import glob
import os
import re
import shlex

from . import files
from .model import DebianIface, IfcfgFile, NetRule, NmConnection


def parse_shell_vars(text: str) -> dict[str, str]:
    """KEY=value lines as /etc/sysconfig files hold them (no expansion, like ifup)."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if not m:
            continue
        try:
            parts = shlex.split(m.group(2), comments=True, posix=True)
            value = parts[0] if parts else ""
        except ValueError:
            value = m.group(2).strip().strip("\"'")
        out[m.group(1)] = value
    return out


def parse_ifcfg(text: str, path: str = "") -> IfcfgFile:
    values = parse_shell_vars(text)
    device = values.get("DEVICE") or (os.path.basename(path)[len("ifcfg-"):] if path else None)
    return IfcfgFile(path=path, device=device, values=values)


def parse_interfaces(text: str) -> tuple[list[DebianIface], list[str]]:
    """Stanzas of /etc/network/interfaces, and the `source` patterns it includes."""
    # Backslash at the end of a line continues it.
    text = re.sub(r"\\\n", " ", text)
    ifaces: list[DebianIface] = []
    auto: set[str] = set()
    sources: list[str] = []
    current: DebianIface | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        key = words[0]
        if key == "iface" and len(words) >= 4:
            current = DebianIface(name=words[1], family=words[2], method=words[3], line=no)
            ifaces.append(current)
        elif key in ("auto", "allow-auto", "allow-hotplug") or key.startswith("allow-"):
            auto.update(words[1:])
            current = None
        elif key in ("source", "source-directory"):
            sources.extend(words[1:])
            current = None
        elif key in ("mapping", "rename"):
            current = None
        elif current is not None:
            current.options[key] = " ".join(words[1:])
    for i in ifaces:
        i.auto = i.name in auto
    return ifaces, sources


def parse_nm_keyfile(text: str, path: str = "") -> NmConnection:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    try:
        cp.read_string(text)
    except configparser.Error:
        return NmConnection(path=path, id=None, type=None, interface_name=None,
                            mac_address=None, ipv4_method=None)

    def get(section, key):
        return cp.get(section, key, fallback=None) if cp.has_section(section) else None

    mac = get("ethernet", "mac-address") or get("802-3-ethernet", "mac-address")
    if mac and ";" in mac:
        # Old keyfiles store the MAC as decimal bytes: "0;26;75;220;130;16;"
        try:
            mac = ":".join(f"{int(b):02x}" for b in mac.split(";") if b.strip())
        except ValueError:
            pass
    return NmConnection(path=path, id=get("connection", "id"), type=get("connection", "type"),
                        interface_name=get("connection", "interface-name"),
                        mac_address=mac.lower() if mac else None,
                        ipv4_method=get("ipv4", "method"))


def parse_nm_ipv4(text: str) -> tuple[list[str], str | None]:
    """ADDRESS/PREFIX list and gateway of a keyfile (for the iSCSI original-address login)."""
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    try:
        cp.read_string(text)
    except configparser.Error:
        return [], None
    return nm_ipv4(cp)


def nm_ipv4(cp: configparser.ConfigParser) -> tuple[list[str], str | None]:
    """ADDRESS/PREFIX list and gateway of a keyfile's [ipv4] section.

    NetworkManager has written three spellings over the years:
    address1=10.0.0.5/24,10.0.0.1 (gateway after a comma), addresses1=10.0.0.5;24;10.0.0.1;
    (0.9.x), and a separate gateway= key.
    """
    if not cp.has_section("ipv4"):
        return [], None
    addresses: list[str] = []
    gateway = cp.get("ipv4", "gateway", fallback=None) or None
    keys = sorted((k for k in cp.options("ipv4") if re.fullmatch(r"address(es)?\d*", k)),
                  key=lambda k: int(re.sub(r"\D", "", k) or 0))
    for key in keys:
        value = cp.get("ipv4", key).strip()
        if ";" in value:
            bits = [b.strip() for b in value.split(";") if b.strip()]
            if bits:
                addresses.append(f"{bits[0]}/{bits[1]}" if len(bits) > 1 else bits[0])
            if len(bits) > 2 and bits[2] != "0.0.0.0":
                gateway = gateway or bits[2]
        elif value:
            parts = [p.strip() for p in value.split(",")]
            addresses.append(parts[0])
            if len(parts) > 1 and parts[1]:
                gateway = gateway or parts[1]
    return addresses, gateway


def parse_net_rules(text: str) -> list[NetRule]:
    rules = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = re.search(r'\bNAME\s*:?=\s*"([^"]+)"', line)
        if not name:
            continue
        mac = re.search(r'ATTRS?\{address\}\s*==\s*"([^"]+)"', line)
        rules.append(NetRule(mac=mac.group(1).lower() if mac else None, name=name.group(1),
                             line=no))
    return rules


# --- reading a tree -----------------------------------------------------------

def read_ifcfg(root: str) -> list[IfcfgFile]:
    out = []
    for rel_dir in ("etc/sysconfig/network-scripts", "etc/sysconfig/network"):
        for name in files.listdir(root, rel_dir):
            # ifcfg-eth0 but not backups (ifcfg-eth0.bak, ifcfg-eth0~) that ifup ignores
            if not name.startswith("ifcfg-") or name == "ifcfg-lo" or name.endswith(
                    ("~", ".bak", ".orig", ".rpmsave", ".rpmnew")):
                continue
            text = files.read_text(root, f"{rel_dir}/{name}")
            if text is not None:
                out.append(parse_ifcfg(text, f"/{rel_dir}/{name}"))
    return out


def read_interfaces(root: str) -> list[DebianIface]:
    text = files.read_text(root, "etc/network/interfaces")
    if text is None:
        return []
    ifaces, sources = parse_interfaces(text)
    seen = {"etc/network/interfaces"}
    for pattern in sources:
        # `source` globs are paths of the source OS: expand them inside the tree.
        if not pattern.startswith("/"):
            pattern = "/etc/network/" + pattern
        base = files.resolve(root, os.path.dirname(pattern)) or ""
        for path in sorted(glob.glob(os.path.join(base, os.path.basename(pattern)))):
            rel = os.path.relpath(path, root)
            if rel in seen or not os.path.isfile(path):
                continue
            seen.add(rel)
            more, _ = parse_interfaces(files.read_text(root, rel) or "")
            ifaces.extend(more)
    return [i for i in ifaces if i.method != "loopback" and i.name != "lo"]


def read_nm(root: str) -> list[NmConnection]:
    out = []
    for rel_dir in ("etc/NetworkManager/system-connections",):
        for name in files.listdir(root, rel_dir):
            text = files.read_text(root, f"{rel_dir}/{name}")
            if text is not None:
                out.append(parse_nm_keyfile(text, f"/{rel_dir}/{name}"))
    return out


def read_nm_ipv4(root: str) -> list[tuple[NmConnection, list[str], str | None]]:
    """Each keyfile's connection with its IPv4 addresses (ADDRESS/PREFIX) and gateway."""
    out = []
    for rel_dir in ("etc/NetworkManager/system-connections",):
        for name in files.listdir(root, rel_dir):
            text = files.read_text(root, f"{rel_dir}/{name}")
            if text is not None:
                addresses, gateway = parse_nm_ipv4(text)
                out.append((parse_nm_keyfile(text, f"/{rel_dir}/{name}"), addresses, gateway))
    return out


def read_net_rules(root: str) -> list[NetRule]:
    text = files.read_text(root, "etc/udev/rules.d/70-persistent-net.rules")
    return parse_net_rules(text) if text else []
