"""Network configuration of the source OS: RHEL ifcfg files, Debian
/etc/network/interfaces, NetworkManager keyfiles, and the udev rules that pin
interface names to MAC addresses. In the cloud every MAC is new, so what is
bound to the old ones stops working."""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import os
import posixpath
import re
import shlex
from typing import Protocol

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


def _logical_lines(text: str):
    """(first line number, text) of each logical line: a backslash at the end of a line
    continues it on the next, and the number stays that of the line it started on."""
    start, parts = None, []
    for no, raw in enumerate(text.splitlines(), 1):
        if start is None:
            start = no
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        yield start, " ".join(parts)
        start, parts = None, []
    if parts:
        yield start, " ".join(parts)


def parse_interfaces(text: str, path: str = "/etc/network/interfaces") -> tuple[list[DebianIface], list[str]]:
    """Stanzas of /etc/network/interfaces, and the `source` patterns it includes."""
    ifaces: list[DebianIface] = []
    auto: set[str] = set()
    sources: list[str] = []
    current: DebianIface | None = None
    for no, raw in _logical_lines(text):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        key = words[0]
        if key == "iface" and len(words) >= 4:
            current = DebianIface(name=words[1], family=words[2], method=words[3], line=no, path=path)
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
            current.option_lines.append((no, key, " ".join(words[1:])))
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


# --- reading a guest's files ---------------------------------------------------

class FileSource(Protocol):
    """A guest's files by their absolute path in the guest: a mounted tree (the agent's
    inspection) or the libguestfs appliance (the conversion), read by the same parsers."""

    def read(self, path: str) -> str | None: ...

    def listdir(self, path: str) -> list[str]: ...

    def digest(self, path: str) -> str | None: ...      # sha256 of a (binary) file


class TreeFiles:
    """A FileSource over a mounted tree (symlinks resolved inside it); boot_root and esp_root:
    a separate /boot and the EFI system partition (/boot/efi), mounted elsewhere."""

    def __init__(self, root: str, boot_root: str | None = None, esp_root: str | None = None):
        self.root = root
        self.mounts = [(m, r) for m, r in (("boot/efi", esp_root), ("boot", boot_root)) if r is not None]

    def _where(self, path: str) -> tuple[str, str]:
        rel = path.strip("/")
        for mount, real in self.mounts:
            if rel == mount or rel.startswith(mount + "/"):
                return real, rel[len(mount):].lstrip("/") or "."
        return self.root, rel

    def read(self, path: str) -> str | None:
        return files.read_text(*self._where(path))

    def listdir(self, path: str) -> list[str]:
        return files.listdir(*self._where(path))

    def digest(self, path: str) -> str | None:
        real = files.resolve(*self._where(path))
        if real is None or not os.path.isfile(real):
            return None
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


IFCFG_DIRS = ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network")
# backups ifup ignores (ifcfg-eth0.bak, ifcfg-eth0~)
IFCFG_IGNORED = ("~", ".bak", ".orig", ".rpmsave", ".rpmnew")


def is_ifcfg_name(name: str) -> bool:
    return name.startswith("ifcfg-") and name != "ifcfg-lo" and not name.endswith(IFCFG_IGNORED)


def read_ifcfg(root: str) -> list[IfcfgFile]:
    return read_ifcfg_from(TreeFiles(root))


def read_ifcfg_from(fs: FileSource) -> list[IfcfgFile]:
    out = []
    for folder in IFCFG_DIRS:
        for name in fs.listdir(folder):
            if is_ifcfg_name(name):
                text = fs.read(f"{folder}/{name}")
                if text is not None:
                    out.append(parse_ifcfg(text, f"{folder}/{name}"))
    return out


def read_interfaces(root: str) -> list[DebianIface]:
    return read_interfaces_from(TreeFiles(root))


def read_interfaces_from(fs: "FileSource") -> list[DebianIface]:
    """/etc/network/interfaces and the files its `source` lines include (globs expanded in
    the guest's own tree), loopback left out."""
    text = fs.read("/etc/network/interfaces")
    if text is None:
        return []
    ifaces, sources = parse_interfaces(text)
    seen = {"/etc/network/interfaces"}
    for pattern in sources:
        if not pattern.startswith("/"):
            pattern = "/etc/network/" + pattern
        folder, name = posixpath.split(pattern)
        for entry in fs.listdir(folder):
            path = posixpath.join(folder, entry)
            if path in seen or not fnmatch.fnmatchcase(entry, name):
                continue
            seen.add(path)
            more_text = fs.read(path)
            if more_text is not None:
                ifaces.extend(parse_interfaces(more_text, path)[0])
    return [i for i in ifaces if i.method != "loopback" and i.name != "lo"]


NM_DIR = "/etc/NetworkManager/system-connections"


def read_nm(root: str) -> list[NmConnection]:
    return [c for c, _ in read_nm_texts(TreeFiles(root))]


def read_nm_texts(fs: FileSource) -> list[tuple[NmConnection, str]]:
    """Each keyfile's connection with the file's text."""
    out = []
    for name in fs.listdir(NM_DIR):
        text = fs.read(f"{NM_DIR}/{name}")
        if text is not None:
            out.append((parse_nm_keyfile(text, f"{NM_DIR}/{name}"), text))
    return out


def read_nm_ipv4(root: str) -> list[tuple[NmConnection, list[str], str | None]]:
    """Each keyfile's connection with its IPv4 addresses (ADDRESS/PREFIX) and gateway."""
    return [(c, *parse_nm_ipv4(text)) for c, text in read_nm_texts(TreeFiles(root))]


NET_RULES = "/etc/udev/rules.d/70-persistent-net.rules"


def read_net_rules(root: str) -> list[NetRule]:
    return read_net_rules_from(TreeFiles(root))


def read_net_rules_from(fs: FileSource) -> list[NetRule]:
    text = fs.read(NET_RULES)
    return parse_net_rules(text) if text else []
