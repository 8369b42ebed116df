"""Read the source OS's iSCSI identity from its root, read-only.

The parsers live in agent/inspect (iscsi.py, network.py); this module puts
their results together: which name, which targets at which portals with which
CHAP, and which NIC with which address the sessions used.
"""

from __future__ import annotations

import ipaddress
import logging

from ...guestos import files, iscsi as ins_iscsi, netconfig, network, osrelease
from ...guestos.model import IfaceKind, IscsidConf
from .model import Chap, IscsiTarget, NetInterface, SourceIscsiConfig, make_portal, split_portal

log = logging.getLogger("coldclone.iscsi")


def chap_from(conf: IscsidConf, prefix: str) -> Chap | None:
    """node.session.auth.* or discovery.sendtargets.auth.* of a file or record."""
    s, sec = conf.settings, conf.secrets
    c = Chap(authmethod=s.get(f"{prefix}.authmethod"),
             username=s.get(f"{prefix}.username") or None,
             password=sec.get(f"{prefix}.password"),
             username_in=s.get(f"{prefix}.username_in") or None,
             password_in=sec.get(f"{prefix}.password_in"))
    if c.password is not None and not c.password.reveal():
        c.password = None
    if c.password_in is not None and not c.password_in.reveal():
        c.password_in = None
    if not (c.authmethod or c.username or c.password):
        return None
    return c


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def target_from_record(path: str, portal_name: str, iface: str | None,
                       rec: IscsidConf) -> IscsiTarget | None:
    s = rec.settings
    # The record is under nodes/<iqn>/...: the path names the target when the record does not.
    parts = path.strip("/").split("/")
    idx = parts.index("nodes") if "nodes" in parts else -1
    iqn = s.get("node.name") or (parts[idx + 1] if idx >= 0 and len(parts) > idx + 1 else None)
    if not iqn:
        return None
    p_addr, p_port, p_tpgt = ins_iscsi.split_portal_name(portal_name)
    address = s.get("node.conn[0].address") or p_addr
    port = _int(s.get("node.conn[0].port")) or p_port
    tpgt = _int(s.get("node.tpgt"))
    if tpgt is None:
        tpgt = p_tpgt
    return IscsiTarget(
        iqn=iqn, portal=make_portal(address, port), tpgt=tpgt,
        auth=chap_from(rec, "node.session.auth"),
        startup=s.get("node.startup") or s.get("node.conn[0].startup"),
        iface=s.get("iface.iscsi_ifacename") or iface,
        net_ifacename=_unset(s.get("iface.net_ifacename")),
        hwaddress=_unset(s.get("iface.hwaddress")),
        source=path)


def _unset(value: str | None) -> str | None:
    # open-iscsi writes <empty> for unset fields.
    if value is None or value.strip() in ("", "<empty>", "default"):
        return None
    return value.strip().lower()


# --- the NIC and its address --------------------------------------------------

def candidate_interfaces(root: str) -> list[NetInterface]:
    """Every IPv4 configuration the source OS has (guestos.netconfig: every style, one model),
    one per address, DHCP ones without."""
    out: list[NetInterface] = []
    for i in netconfig.read_network(network.TreeFiles(root)).interfaces:
        if i.kind not in (IfaceKind.ETHERNET, IfaceKind.VLAN):
            continue
        name = i.name if i.named else None
        v4 = [a for a in i.addresses if ":" not in a]
        if i.method == "dhcp" and not v4:
            out.append(NetInterface(name=name, mac=i.mac, method="dhcp", source=i.path))
        for a in v4:
            addr, _, p = a.partition("/")
            out.append(NetInterface(name=name, mac=i.mac, method="static", address=addr,
                                    prefix=_int(p) if p else None, gateway=i.gateway, source=i.path))
    return out


def _same_subnet(iface: NetInterface, host: str) -> bool:
    if not iface.address:
        return False
    try:
        net = ipaddress.IPv4Network(f"{iface.address}/{iface.prefix or 24}", strict=False)
        return ipaddress.IPv4Address(host) in net
    except ValueError:
        return False


def pick_interface(cands: list[NetInterface], targets: list[IscsiTarget],
                   portals: list[str] = ()) -> NetInterface | None:
    """The NIC the sessions used: bound in the node record, else on the portal's subnet,
    else the one with the default gateway, else the only static one."""
    for t in targets:
        for c in cands:
            if t.net_ifacename and c.name == t.net_ifacename:
                return c
            if t.hwaddress and c.mac == t.hwaddress:
                return c
    hosts = [t.host for t in targets] + [split_portal(p)[0] for p in portals]
    for h in hosts:
        for c in cands:
            if _same_subnet(c, h):
                return c
    static = [c for c in cands if c.method == "static"]
    with_gw = [c for c in static if c.gateway]
    if with_gw:
        return with_gw[0]
    return static[0] if static else (cands[0] if cands else None)


# --- the whole identity -------------------------------------------------------

def read_source_config(root: str, *, device: str | None = None) -> SourceIscsiConfig | None:
    """The iSCSI identity of the OS under root, or None when it has no initiator name."""
    ini = ins_iscsi.read_initiator(root)
    if ini is None or not ini.name:
        return None
    cfg = SourceIscsiConfig(root=root, initiator_name=ini.name, alias=ini.alias, device=device)
    osinfo = osrelease.read_os(root)
    cfg.os_name = osinfo.pretty_name or osinfo.name
    conf = ins_iscsi.read_iscsid(root)
    if conf is not None:
        cfg.chap = chap_from(conf, "node.session.auth")
        cfg.discovery_chap = chap_from(conf, "discovery.sendtargets.auth")
    seen: set[tuple[str, str]] = set()
    for path, portal_name, iface, rec in ins_iscsi.read_node_records(root):
        t = target_from_record(path, portal_name, iface, rec)
        if t is None:
            cfg.warnings.append(f"{path}: not a node record (no node.name); skipped")
            continue
        if (t.iqn, t.portal) in seen:
            continue   # the same node in both /etc/iscsi and /var/lib/iscsi, or per iface
        seen.add((t.iqn, t.portal))
        cfg.targets.append(t)
    for path, rec in ins_iscsi.read_sendtargets_records(root):
        s = rec.settings
        portal = make_portal(s["discovery.sendtargets.address"],
                             _int(s.get("discovery.sendtargets.port")))
        if portal not in cfg.discovery_portals:
            cfg.discovery_portals.append(portal)
        own = chap_from(rec, "discovery.sendtargets.auth")
        if own is not None and own.enabled and not (cfg.discovery_chap and cfg.discovery_chap.enabled):
            cfg.discovery_chap = own
    if not cfg.targets and not cfg.discovery_portals:
        cfg.warnings.append("no node records and no discovery records: the source never "
                            "logged in to a target from this OS (add a target by hand)")
    cfg.interface = pick_interface(candidate_interfaces(root), cfg.targets,
                                   cfg.discovery_portals)
    if files.exists(root, "etc/iscsi/ifaces") and files.listdir(root, "etc/iscsi/ifaces"):
        cfg.warnings.append("the source binds sessions to iSCSI ifaces (/etc/iscsi/ifaces); "
                            "the live system logs in over its default interface")
    log.info("source iSCSI identity in %s: %s, %d target(s)", device or root,
             cfg.initiator_name, len(cfg.targets))
    return cfg
