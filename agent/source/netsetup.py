"""The live system's own network, one service with undo: DHCP or a static address on a
chosen NIC (coldclone.ip=, the TUI's network screen: ``apply(parse_ip_spec(text))``), and
the source server's own address borrowed for iSCSI (``borrow_address``). Each returns a
NetworkChange that says what was done and can take it back (the borrowed address must leave
the NIC when the capture ends: the original server may be powered on again). The source
server's disks are not touched; only the live system's interfaces, routes, resolv.conf.

Spec grammar (docs/cli.md, coldclone.ip=):
    dhcp | IFACE:dhcp | [IFACE:]ADDRESS/PREFIX[,gw=GATEWAY][,dns=SERVER]...
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import dataclasses
from dataclasses import dataclass, field

from .discover.model import Inventory, Nic
from .discover.udevdb import read_attr
from ..errors import UsageError
from ..runcmd import run

SYS_NET = "/sys/class/net"
RESOLV_CONF = "/etc/resolv.conf"
# dhclient -1 gives up after this many seconds (its own default is 60).
DHCP_TIMEOUT = 30
IFACE_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")


@dataclass
class IpSpec:
    dhcp: bool
    iface: str | None = None          # None: the first NIC with a link
    address: str | None = None        # "192.168.10.21/24"
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"{self.iface}:" if self.iface else ""
        if self.dhcp:
            return head + "dhcp"
        tail = (f",gw={self.gateway}" if self.gateway else "") + "".join(f",dns={d}" for d in self.dns)
        return f"{head}{self.address}{tail}"


def _bad(what: str, text: str, why: str) -> UsageError:
    sep = "" if what.endswith("=") else " "
    return UsageError(f"{what}{sep}{text!r}: {why}. Write dhcp, IFACE:dhcp, or "
                      f"[IFACE:]ADDRESS/PREFIX[,gw=GATEWAY][,dns=SERVER], "
                      f"e.g. eth0:192.168.10.21/24,gw=192.168.10.1,dns=192.168.10.2")


def _is_interface(text: str) -> bool:
    try:
        ipaddress.ip_interface(text.strip())
    except ValueError:
        return False
    return True


def parse_ip_spec(text: str, what: str = "network setting") -> IpSpec:
    """what: how the error names the setting (the kernel command line key, for config)."""
    raw = text
    text = text.strip()
    if not text:
        raise _bad(what, raw, "it is empty")
    iface = None
    # IPv6 addresses contain ':' too: only split off an interface name when what
    # precedes the first ',' is not an address by itself.
    head, sep, rest = text.partition(":")
    if sep and not _is_interface(text.split(",")[0]):
        if not IFACE_RE.fullmatch(head) or re.fullmatch(r"[\d.]+", head):
            raise _bad(what, raw, f"{head!r} is not an interface name")
        iface, text = head, rest
    if text.lower() == "dhcp":
        return IpSpec(dhcp=True, iface=iface)
    addr, *opts = [p.strip() for p in text.split(",")]
    if "/" not in addr:
        raise _bad(what, raw, f"{addr!r} has no prefix length (write it as ADDRESS/PREFIX, e.g. {addr}/24)")
    try:
        net = ipaddress.ip_interface(addr)
    except ValueError:
        raise _bad(what, raw, f"{addr!r} is not an IPv4/IPv6 address with a prefix") from None
    if net.network.prefixlen == net.max_prefixlen and net.version == 4:
        raise _bad(what, raw, f"prefix /{net.network.prefixlen} leaves no network (did you mean /24?)")
    spec = IpSpec(dhcp=False, iface=iface, address=str(net))
    for opt in opts:
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if not eq or not value:
            raise _bad(what, raw, f"{opt!r} should be gw=ADDRESS or dns=ADDRESS")
        if key not in ("gw", "gateway", "dns"):
            raise _bad(what, raw, f"unknown option {key!r} (gw= and dns= are known)")
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            raise _bad(what, raw, f"{key}={value!r} is not an IP address") from None
        if key in ("gw", "gateway"):
            if spec.gateway:
                raise _bad(what, raw, "gw= is given twice")
            if ip not in net.network:
                raise _bad(what, raw, f"gateway {ip} is not inside {net.network}")
            spec.gateway = str(ip)
        else:
            spec.dns.append(str(ip))
    return spec



def _int(text: str | None) -> int | None:
    try:
        v = int(text) if text is not None else None
    except ValueError:
        return None
    return v if v and v > 0 else None


def addresses_by_iface() -> dict[str, list[str]]:
    """Current addresses per interface (`ip -o addr show`)."""
    res = run(["ip", "-o", "addr", "show"], check=False, quiet=True)
    out: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("inet", "inet6") and not parts[3].startswith("fe80:"):
            out.setdefault(parts[1], []).append(parts[3])
    return out


def list_nics(inventory: Inventory | None = None, sys_net: str = SYS_NET,
              with_addresses: bool = True) -> list[Nic]:
    """The physical NICs with their link state now: discovery's when given, else /sys/class/net."""
    addrs = addresses_by_iface() if with_addresses else {}
    if inventory is not None and inventory.nics:
        found = inventory.nics
    else:
        try:
            names = sorted(os.listdir(sys_net))
        except OSError:
            names = []
        # Only real hardware: loopback, bridges, ifb and tunnels have no device link.
        found = [Nic(name, read_attr(os.path.join(sys_net, name), "address"))
                 for name in names if name != "lo" and os.path.exists(os.path.join(sys_net, name, "device"))]
    out = []
    for n in found:
        base = os.path.join(sys_net, n.name)
        # The link may have come up (or gone) since discovery: read what changes now.
        carrier = read_attr(base, "carrier")
        speed = _int(read_attr(base, "speed"))
        out.append(dataclasses.replace(
            n, speed_mbps=speed if speed and speed > 0 else n.speed_mbps,
            operstate=read_attr(base, "operstate") or n.operstate,
            carrier=n.carrier if carrier is None else carrier == "1",
            addresses=addrs.get(n.name, [])))
    return out


def choose_iface(spec: IpSpec, nics: list[Nic]) -> str:
    names = [n.name for n in nics]
    if spec.iface:
        if nics and spec.iface not in names:
            raise UsageError(f"network interface {spec.iface} does not exist here "
                             f"(this machine has: {', '.join(names) or 'none'})")
        return spec.iface
    with_link = [n.name for n in nics if n.carrier]
    if with_link:
        return with_link[0]
    if names:
        return names[0]
    raise UsageError("no network interface found: is the NIC's driver in the live system? "
                     "(check `ip link` in the shell)")


@dataclass
class NetworkChange:
    """What one network step did to the live system, and how to take it back."""
    iface: str
    lines: list[str] = field(default_factory=list)          # what was done, one line each
    local: str | None = None                                 # the address we now speak from
    added: list[str] = field(default_factory=list)          # addresses we added
    removed: list[str] = field(default_factory=list)        # addresses we flushed
    routes: list[str] = field(default_factory=list)         # routes we added ("DEST via GW")
    old_default: str | None = None                          # the default route we replaced
    resolv: tuple[str, str | None] | None = None            # (path, previous text)
    leased: bool = False                                     # dhclient holds a lease

    def undo(self) -> None:
        """Take back what this change did (safe to call twice)."""
        for r in self.routes:
            run(["ip", "route", "del", *r.split()], check=False, timeout=20)
        if self.old_default is not None:
            run(["ip", "route", "replace", *self.old_default.split()], check=False, timeout=20)
        for a in self.added:
            run(["ip", "addr", "del", a, "dev", self.iface], check=False, timeout=20)
        for a in self.removed:
            run(["ip", "addr", "add", a, "dev", self.iface], check=False, timeout=20)
        if self.leased:
            run(["dhclient", "-r", self.iface], check=False, timeout=DHCP_TIMEOUT + 15)
        if self.resolv is not None:
            path, text = self.resolv
            if text is None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                _replace_file(path, text)
        self.routes, self.added, self.removed, self.old_default = [], [], [], None
        self.leased, self.resolv = False, None


def _default_route(iface: str) -> str | None:
    out = run(["ip", "route", "show", "default"], check=False, quiet=True).stdout.strip()
    return out.splitlines()[0] if out else None


def lease(iface: str, change: NetworkChange) -> None:
    """DHCP on iface, the one way (the same dhclient flags for coldclone.ip=dhcp and iSCSI).
    Release first so a stale lease from boot does not hide a failed renewal."""
    run(["dhclient", "-r", iface], check=False, quiet=True)
    run(["dhclient", "-1", "-v", iface], timeout=DHCP_TIMEOUT + 15,
        hint=f"no DHCP server answered on {iface}: give a static address instead "
             f"(e.g. {iface}:192.168.10.21/24,gw=192.168.10.1)")
    change.leased = True
    got = addresses_by_iface().get(iface, [])
    change.local = next((a.split("/")[0] for a in got if ":" not in a), None)
    change.lines.append(f"{iface}: DHCP lease {', '.join(got) or '(no address?)'}")


def apply(spec: IpSpec, *, nics: list[Nic] | None = None, resolv_conf: str = RESOLV_CONF) -> NetworkChange:
    """Configure the live system's network; the change says what was done (`lines`)."""
    nics = list_nics() if nics is None else nics
    iface = choose_iface(spec, nics)
    change = NetworkChange(iface)
    run(["ip", "link", "set", "dev", iface, "up"])
    change.lines.append(f"{iface}: link up")
    if spec.dhcp:
        lease(iface, change)
        return change
    change.removed = [a for a in addresses_by_iface().get(iface, []) if a != spec.address]
    run(["ip", "addr", "flush", "dev", iface, "scope", "global"])
    run(["ip", "addr", "add", spec.address, "dev", iface])
    change.added.append(spec.address)
    change.local = spec.address.split("/")[0]
    change.lines.append(f"{iface}: address {spec.address}")
    if spec.gateway:
        change.old_default = _default_route(iface) or None
        run(["ip", "route", "replace", "default", "via", spec.gateway, "dev", iface])
        change.lines.append(f"default route via {spec.gateway}")
    if spec.dns:
        try:
            with open(resolv_conf) as f:
                previous: str | None = f.read()
        except OSError:
            previous = None
        change.resolv = (resolv_conf, previous)
        write_resolv_conf(spec.dns, resolv_conf)
        change.lines.append(f"DNS {', '.join(spec.dns)} ({resolv_conf})")
    return change


def choose_by_mac(nics: list[Nic], want_mac: str | None) -> Nic | None:
    """The NIC with this MAC (the same server the source OS ran on), else the first one up."""
    if want_mac:
        for n in nics:
            if (n.mac or "").lower() == want_mac.lower():
                return n
    return next((n for n in nics if n.up), nics[0] if nics else None)


def borrow_address(nic: Nic, cidr: str, *, gateway: str | None = None,
                   reach: list[str] = ()) -> NetworkChange:
    """Add an address next to what the NIC has (the conversion server stays reachable),
    with host routes via `gateway` to the hosts in `reach` outside its network; undo()
    removes exactly what was added."""
    iface = ipaddress.IPv4Interface(cidr)
    change = NetworkChange(nic.name, local=str(iface.ip))
    run(["ip", "link", "set", "dev", nic.name, "up"], timeout=20)
    if str(iface) not in nic.addresses:
        run(["ip", "addr", "add", str(iface), "dev", nic.name], timeout=20,
            hint=f"could not add {iface} to {nic.name}")
        change.added.append(str(iface))
    change.lines.append(f"{nic.name}: address {iface} added")
    for host in reach:
        try:
            outside = gateway and ipaddress.IPv4Address(host) not in iface.network
        except ValueError:
            continue
        if outside:
            route = f"{host}/32 via {gateway} dev {nic.name}"
            if run(["ip", "route", "replace", *route.split()], check=False, timeout=20).returncode == 0:
                change.routes.append(route)
                change.lines.append(f"route to {host} via {gateway}")
    return change


def _replace_file(path: str, text: str) -> None:
    # resolv.conf may be a symlink into /run (systemd-resolved); replace the link, not its target.
    tmp = path + ".coldclone"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_resolv_conf(servers: list[str], path: str = RESOLV_CONF) -> None:
    _replace_file(path, "# written by coldclone (network setup)\n" + "".join(f"nameserver {s}\n" for s in servers))
