"""The source server's software-iSCSI identity, as the operator sees it.

CHAP secrets are agent.guestos.model.Secret: kept in memory for the login,
shown everywhere else (repr, str, agent.records' JSON, logs) as ****.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...guestos.model import MASK, Secret

DEFAULT_PORT = 3260


@dataclass
class Chap:
    """One direction pair of CHAP credentials (node.session.auth.* or discovery.sendtargets.auth.*).

    username/password: the initiator proves itself to the target.
    username_in/password_in: mutual CHAP, the target proves itself back.
    """

    username: str | None = None
    password: Secret | None = None
    username_in: str | None = None
    password_in: Secret | None = None
    authmethod: str | None = None      # CHAP / None as written in the file

    @property
    def enabled(self) -> bool:
        if (self.authmethod or "").strip().upper() == "NONE":
            return False
        return bool(self.username and self.password) or (
            (self.authmethod or "").strip().upper() == "CHAP")

    @property
    def mutual(self) -> bool:
        return bool(self.username_in and self.password_in)

    def describe(self) -> str:
        if not self.enabled:
            return "none"
        out = f"CHAP user {self.username or '?'} secret {MASK}"
        if self.mutual:
            out += f", mutual (target user {self.username_in} secret {MASK})"
        return out


@dataclass
class NetInterface:
    """The NIC the source's sessions went out on, and its IPv4 configuration."""

    name: str | None = None           # eth1, ens192 (the source's name; ours may differ)
    mac: str | None = None
    method: str = "static"            # static / dhcp / unknown
    address: str | None = None        # 192.168.10.21
    prefix: int | None = None         # 24
    gateway: str | None = None
    source: str | None = None         # the file it came from (/etc/sysconfig/network-scripts/ifcfg-eth1)

    @property
    def cidr(self) -> str | None:
        if not self.address:
            return None
        return f"{self.address}/{self.prefix if self.prefix is not None else 24}"


@dataclass
class IscsiTarget:
    iqn: str
    portal: str                       # host:port, [v6]:port for IPv6
    tpgt: int | None = None
    luns: list[int] = field(default_factory=list)   # known after login
    auth: Chap | None = None          # per-node CHAP; None: iscsid.conf's defaults apply
    startup: str | None = None        # automatic / manual / onboot
    iface: str | None = None          # the open-iscsi iface the record is bound to (default ...)
    net_ifacename: str | None = None  # iface.net_ifacename of the record, when bound
    hwaddress: str | None = None      # iface.hwaddress of the record, when bound
    source: str | None = None         # the record's path in the source OS

    @property
    def host(self) -> str:
        return split_portal(self.portal)[0]

    @property
    def port(self) -> int:
        try:
            return split_portal(self.portal)[1] or DEFAULT_PORT
        except ValueError:
            return DEFAULT_PORT


def split_portal(text: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]', '[v6]:port' or a bare IPv6 address -> (host, port or None).
    The one reading of a portal: records, discovery output and what the operator types."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f"portal {text!r}: the port must be a number")
    return host, int(port) if port else None


def make_portal(host: str, port: int | None) -> str:
    host = host.strip().strip("[]")
    port = port or DEFAULT_PORT
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class SourceIscsiConfig:
    """Everything needed to log in as the source server did."""

    root: str                          # where the source OS was read (a mount point, or a tree)
    initiator_name: str
    alias: str | None = None
    device: str | None = None          # the partition the OS root is on (/dev/sda2)
    os_name: str | None = None
    targets: list[IscsiTarget] = field(default_factory=list)
    chap: Chap | None = None           # iscsid.conf node.session.auth.* (defaults for every node)
    discovery_chap: Chap | None = None  # iscsid.conf / st_config discovery.sendtargets.auth.*
    discovery_portals: list[str] = field(default_factory=list)   # sendtargets records
    interface: NetInterface | None = None
    warnings: list[str] = field(default_factory=list)

    def chap_for(self, target: IscsiTarget) -> Chap | None:
        """The CHAP a login to target uses: the node record's own, else iscsid.conf's."""
        if target.auth is not None and (target.auth.enabled or target.auth.authmethod):
            return target.auth if target.auth.enabled else None
        return self.chap if self.chap and self.chap.enabled else None

    def portals(self) -> list[str]:
        """Where to send SendTargets: the discovery records, then every node's portal."""
        out: list[str] = []
        for p in self.discovery_portals + [t.portal for t in self.targets]:
            if p not in out:
                out.append(p)
        return out

    def describe(self) -> list[str]:
        """What was found, as lines for the console (secrets as ****)."""
        where = self.device or self.root
        lines = [f"source iSCSI identity from {where}"
                 + (f" ({self.os_name})" if self.os_name else "") + ":",
                 f"  initiator name {self.initiator_name}"
                 + (f" (alias {self.alias})" if self.alias else "")]
        if self.chap and self.chap.enabled:
            lines.append(f"  login auth: {self.chap.describe()}")
        if self.discovery_chap and self.discovery_chap.enabled:
            lines.append(f"  discovery auth: {self.discovery_chap.describe()}")
        for t in self.targets:
            own = f", auth {t.auth.describe()}" if t.auth and t.auth.enabled else ""
            lines.append(f"  target {t.iqn} at {t.portal}"
                         + (f" tpgt {t.tpgt}" if t.tpgt is not None else "")
                         + (f" startup {t.startup}" if t.startup else "") + own)
        for p in self.discovery_portals:
            lines.append(f"  discovery portal {p}")
        if self.interface:
            i = self.interface
            lines.append(f"  network: {i.name or '?'} {i.mac or ''} "
                         f"{i.cidr or i.method}"
                         + (f" gw {i.gateway}" if i.gateway else "")
                         + (f" ({i.source})" if i.source else ""))
        for w in self.warnings:
            lines.append(f"  note: {w}")
        return lines
