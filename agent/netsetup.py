"""The live system's own network: DHCP or a static address on a chosen NIC.

Operators often stand on a server segment without DHCP, so both the TUI's
network screen and the headless runner (coldclone.ip=) come here:
``apply(parse_ip_spec(text))``. The source server's disks are not touched;
only the running live system's interfaces, routes and /etc/resolv.conf.

Spec grammar (docs/cli.md, coldclone.ip=):
    dhcp | IFACE:dhcp | [IFACE:]ADDRESS/PREFIX[,gw=GATEWAY][,dns=SERVER]...
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from .discover.udevdb import read_attr
from .errors import UsageError
from .runcmd import run

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


@dataclass
class NicState:
    """One interface of the live system as the network screen shows it."""

    name: str
    mac: str | None
    speed_mbps: int | None
    operstate: str | None
    carrier: bool | None
    addresses: list[str] = field(default_factory=list)   # "10.0.2.15/24"

    @property
    def label(self) -> str:
        speed = f"{self.speed_mbps} Mb/s" if self.speed_mbps else "no link" if self.carrier is False else "-"
        return f"{self.name} {self.mac or '-'} {speed} {self.operstate or '-'}"


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


def _addresses() -> dict[str, list[str]]:
    """Current addresses per interface (`ip -o addr show`)."""
    res = run(["ip", "-o", "addr", "show"], check=False, quiet=True)
    out: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("inet", "inet6") and not parts[3].startswith("fe80:"):
            out.setdefault(parts[1], []).append(parts[3])
    return out


def list_nics(inventory=None, sys_net: str = SYS_NET, with_addresses: bool = True) -> list[NicState]:
    """The physical NICs: from discovery's Nic records when given, else /sys/class/net."""
    addrs = _addresses() if with_addresses else {}
    out = []
    if inventory is not None and getattr(inventory, "nics", None):
        for n in inventory.nics:
            carrier = read_attr(os.path.join(sys_net, n.name), "carrier")
            out.append(NicState(n.name, n.mac, n.speed_mbps, n.operstate,
                                None if carrier is None else carrier == "1", addrs.get(n.name, [])))
        return out
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        names = []
    for name in names:
        base = os.path.join(sys_net, name)
        # Only real hardware: loopback, bridges, ifb and tunnels have no device link.
        if name == "lo" or not os.path.exists(os.path.join(base, "device")):
            continue
        carrier = read_attr(base, "carrier")
        out.append(NicState(name, read_attr(base, "address"), _int(read_attr(base, "speed")),
                            read_attr(base, "operstate"),
                            None if carrier is None else carrier == "1", addrs.get(name, [])))
    return out


def choose_iface(spec: IpSpec, nics: list[NicState]) -> str:
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


def apply(spec: IpSpec, *, nics: list[NicState] | None = None, resolv_conf: str = RESOLV_CONF) -> list[str]:
    """Configure the live system's network; return what was done, one line each."""
    nics = list_nics() if nics is None else nics
    iface = choose_iface(spec, nics)
    done = []
    run(["ip", "link", "set", "dev", iface, "up"])
    done.append(f"{iface}: link up")
    if spec.dhcp:
        # Release first so a stale lease from boot does not hide a failed renewal.
        run(["dhclient", "-r", iface], check=False, quiet=True)
        run(["dhclient", "-1", "-v", iface], timeout=DHCP_TIMEOUT + 15,
            hint=f"no DHCP server answered on {iface}: give a static address instead "
                 f"(e.g. {iface}:192.168.10.21/24,gw=192.168.10.1)")
        got = _addresses().get(iface, [])
        done.append(f"{iface}: DHCP lease {', '.join(got) or '(no address?)'}")
        return done
    run(["ip", "addr", "flush", "dev", iface, "scope", "global"])
    run(["ip", "addr", "add", spec.address, "dev", iface])
    done.append(f"{iface}: address {spec.address}")
    if spec.gateway:
        run(["ip", "route", "replace", "default", "via", spec.gateway, "dev", iface])
        done.append(f"default route via {spec.gateway}")
    if spec.dns:
        write_resolv_conf(spec.dns, resolv_conf)
        done.append(f"DNS {', '.join(spec.dns)} ({resolv_conf})")
    return done


def write_resolv_conf(servers: list[str], path: str = RESOLV_CONF) -> None:
    text = "# written by coldclone (network setup)\n" + "".join(f"nameserver {s}\n" for s in servers)
    # resolv.conf may be a symlink into /run (systemd-resolved); replace the link, not its target.
    tmp = path + ".coldclone"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
