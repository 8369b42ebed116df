"""Find the source server's iSCSI identity and log in with it: the API the
headless runner and the TUI call.

    ids = find_identities(inventory)              # read-only mounts of the local disks
    att = attach(ids[0], iscsi_ip="original", say=print)
    ... discovery now sees att.luns as iSCSI disks; capture them ...
    att.logout()

`auto_attach(mode, iscsi_ip, inventory, say)` is the headless coldclone.iscsi=auto step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from .. import netsetup
from ...choices import IscsiMode
from ..discover.model import Inventory
from ..discover.populate import discover
from ...errors import CommandError, SourceError, UsageError
from ...guestos.iscsi import read_initiator
from ...guestos.model import Secret
from ..inspect.mount import MOUNTABLE, mounted_ro
from ...guestos.tree import looks_like_root
from ...runcmd import run
from . import errors as E
from . import initiator
from .errors import IscsiAclError, IscsiError, IscsiUnreachableError
from .model import Chap, IscsiTarget, SourceIscsiConfig, make_portal, split_portal
from .sourceconfig import read_source_config

log = logging.getLogger("coldclone.iscsi")


# --- finding the identity -------------------------------------------------------

def _filesystems(inventory) -> list[tuple[str, str]]:
    """(device, fstype) of every mountable filesystem on a local (non-iSCSI) disk."""
    out = []
    for disk in inventory.disks:
        if disk.transport == "iscsi" or disk.kind in ("cdrom", "loop", "ram"):
            continue
        if inventory.live_medium and disk.name == inventory.live_medium:
            continue
        if disk.filesystem and disk.filesystem.type in MOUNTABLE and disk.dev_path:
            out.append((disk.dev_path, disk.filesystem.type))
        for p in (disk.partition_table.partitions if disk.partition_table else []):
            if p.filesystem and p.filesystem.type in MOUNTABLE and p.dev_path:
                out.append((p.dev_path, p.filesystem.type))
    return out


def find_identities(inventory=None, *, roots: list[str] | None = None) -> list[SourceIscsiConfig]:
    """The iSCSI identities of every source OS found: on the given roots (trees
    already mounted, for tests and the TUI), else on the inventory's local disks,
    each mounted read-only just long enough to read it. Several or none."""
    out: list[SourceIscsiConfig] = []
    if roots is not None:
        for r in roots:
            cfg = read_source_config(r)
            if cfg is not None:
                out.append(cfg)
        return out
    if inventory is None:
        # The headless runner logs in before its own discovery: look at the disks now.
        inventory = discover()
    for dev, fstype in _filesystems(inventory):
        try:
            with mounted_ro(dev, fstype) as mnt:
                if not looks_like_root(mnt):
                    continue
                cfg = read_source_config(mnt, device=dev)
        except (CommandError, SourceError) as e:   # refused: in use, or not read-only
            log.warning("%s: not inspected for iSCSI: %s", dev, e)
            continue
        if cfg is not None:
            # Everything is read into memory; the mount is gone now.
            cfg.root = f"{dev}:/"
            out.append(cfg)
    return out


def manual_identity(initiator_name: str, portal: str, iqn: str | None = None, *,
                    chap_user: str | None = None, chap_secret: str | None = None,
                    base: SourceIscsiConfig | None = None) -> SourceIscsiConfig:
    """An identity typed by the operator (the TUI's "add a target by hand"), or a
    found one with one more target. Without an IQN, discovery at portal decides."""
    portal = make_portal(*split_portal(portal))
    chap = (Chap(username=chap_user, password=Secret(chap_secret), authmethod="CHAP")
            if chap_user and chap_secret else None)
    cfg = base or SourceIscsiConfig(root="(typed by the operator)", initiator_name=initiator_name)
    cfg.initiator_name = initiator_name
    if iqn:
        cfg.targets.append(IscsiTarget(iqn=iqn, portal=portal, auth=chap, startup="automatic",
                                       source="typed by the operator"))
    elif portal not in cfg.discovery_portals:
        cfg.discovery_portals.append(portal)
        if chap and not cfg.chap:
            cfg.chap = chap
    return cfg


def live_identity(etc_root: str = "/") -> SourceIscsiConfig:
    """When the source OS holds no iSCSI identity: the live system's own initiator name,
    for targets the operator types (their ACL must then admit that name)."""
    own = read_initiator(etc_root)
    if own is None or not own.name:
        raise UsageError(f"no initiator name in {os.path.join(etc_root, 'etc/iscsi/initiatorname.iscsi')}: "
                         f"install open-iscsi, or capture with the source's identity")
    return SourceIscsiConfig(root="(the live system's own name)", initiator_name=own.name, alias=own.alias)


# --- logging in ---------------------------------------------------------------------

@dataclass(frozen=True)
class AttachedLun:
    """A LUN our login made appear: where it is now and where it comes from."""

    path: str          # /dev/sdb
    name: str          # sdb
    iqn: str
    portal: str
    lun: int


@dataclass
class IscsiAttachment:
    identity: SourceIscsiConfig
    targets: list[IscsiTarget] = field(default_factory=list)    # logged in
    luns: list[AttachedLun] = field(default_factory=list)
    net: netsetup.NetworkChange | None = None    # the borrowed address, taken back at logout
    portals: list[str] = field(default_factory=list)   # discovery records we created
    logged_out: bool = False

    @property
    def paths(self) -> list[str]:
        return [x.path for x in self.luns]

    def logout(self, say=None) -> None:
        """Log out of every session and drop what we added; safe to call twice."""
        if self.logged_out:
            return
        self.logged_out = True
        for t in self.targets:
            try:
                initiator.logout(t)
                if say:
                    say(f"iSCSI: logged out of {t.iqn} at {t.portal}")
            except Exception as e:   # noqa: BLE001 - logout must reach every target
                log.warning("logout of %s: %s", t.iqn, e)
        for p in self.portals:
            initiator.forget_discovery(p)
        if self.net:
            self.net.undo()


def _to_login(cfg: SourceIscsiConfig, discovered: list[tuple[str, str, int | None]]) -> list[IscsiTarget]:
    """The source's node records it logs in to at boot; else all of them; else what
    discovery found (a source that only had discovery records)."""
    auto = [t for t in cfg.targets if (t.startup or "").lower() in ("automatic", "onboot")]
    chosen = auto or list(cfg.targets)
    if chosen:
        return chosen
    out, seen = [], set()
    for iqn, portal, tpgt in discovered:
        if iqn not in seen:
            seen.add(iqn)
            out.append(IscsiTarget(iqn=iqn, portal=portal, tpgt=tpgt, startup="discovered"))
    return out


def attach(identity: SourceIscsiConfig, *, iscsi_ip: str = "original", say=print,
           lun_wait: float = initiator.LUN_WAIT) -> IscsiAttachment:
    """Log in as the source server and wait for its LUNs. Raises an IscsiError
    (auth / ACL / unreachable / no LUNs) naming the target and what to check;
    on failure nothing stays logged in."""
    cfg = identity
    if os.path.realpath(cfg.root) == "/":
        # The live system's own /etc is not a source OS; writing our name there
        # would be fine, but reading "/" as the source is a caller's mistake.
        raise ValueError("attach(): the identity was read from / (the live system), not a source OS")
    att = IscsiAttachment(identity=cfg)
    for line in cfg.describe():
        say(line)
    try:
        initiator.write_initiator_name(cfg.initiator_name, cfg.alias)
        initiator.restart_iscsid()
        say(f"iSCSI: live initiator name set to {cfg.initiator_name}")
        portals = cfg.portals()
        att.net = initiator.setup_network(iscsi_ip, cfg.interface, portals, say=say)
        discovered: list[tuple[str, str, int | None]] = []
        reached: set[str] = set()
        unreachable: dict[str, IscsiUnreachableError] = {}
        for p in portals:
            try:
                found = initiator.discover(p, cfg.discovery_chap, cfg.initiator_name)
            except IscsiUnreachableError as e:
                unreachable[p] = e
                say(f"iSCSI: discovery at {p}: unreachable")
                continue
            att.portals.append(p)
            reached.add(p)
            discovered += found
            say(f"iSCSI: discovery at {p}: " + (", ".join(sorted({i for i, _, _ in found}))
                                                 or "no target offered to this initiator"))
        listed = {iqn for iqn, _, _ in discovered}
        targets = _to_login(cfg, discovered)
        if not targets:
            if unreachable:
                raise next(iter(unreachable.values()))
            raise IscsiAclError(
                f"iSCSI: no target is offered to initiator {cfg.initiator_name} at "
                f"{', '.join(portals) or '(no portal known)'}: check the array's ACL / host "
                f"group for this name, or add the target by hand",
                portal=", ".join(portals))
        for t in targets:
            if t.portal in unreachable:
                raise E.unreachable_error(t.iqn, t.portal, detail=unreachable[t.portal].detail,
                                          local=att.net.local if att.net else None)
            # Discovery answered but did not list it: likely an ACL; the login says for sure.
            was_listed = (t.iqn in listed) if t.portal in reached else None
            say(f"iSCSI: logging in to {t.iqn} at {t.portal} as {cfg.initiator_name}")
            initiator.login(t, cfg.chap_for(t), cfg.initiator_name, listed=was_listed,
                            local=att.net.local if att.net else None)
            att.targets.append(t)
        for t in att.targets:
            found = initiator.wait_luns(t, timeout=lun_wait)
            t.luns = [lun for lun, _ in found]
            for lun, name in found:
                att.luns.append(AttachedLun(path=f"/dev/{name}", name=name, iqn=t.iqn,
                                            portal=t.portal, lun=lun))
                say(f"iSCSI: {t.iqn} LUN {lun} is /dev/{name}")
        # Let udev finish with the new disks so discovery sees their ID_PATH.
        run(["udevadm", "settle", "--timeout=30"], check=False, timeout=60)
        return att
    except BaseException:
        att.logout()
        raise


def auto_attach(mode: IscsiMode, iscsi_ip: str, inventory: Inventory | None,
                say: Callable[[str], None] = print) -> IscsiAttachment | None:
    """coldclone.iscsi=auto: find the source identity, log in, return the attachment.

    iscsi=off, or no source iSCSI configuration: say so and return None. A
    failed login raises its IscsiError (the headless runner stops with it: the
    operator asked for a capture that needs the LUNs).
    """
    if mode == IscsiMode.OFF:
        say("iSCSI: coldclone.iscsi=off, not logging in to any target")
        return None
    ids = find_identities(inventory)
    if not ids:
        say("iSCSI: no source OS with an iSCSI initiator name (/etc/iscsi/initiatorname.iscsi) "
            "on the local disks; no iSCSI login")
        return None
    usable = [c for c in ids if c.targets or c.discovery_portals]
    if not usable:
        for c in ids:
            say(f"iSCSI: {c.device or c.root} has initiator name {c.initiator_name} but no "
                f"target or discovery record; no iSCSI login")
        return None
    chosen = usable[0]
    names = {c.initiator_name for c in usable}
    if len(names) > 1:
        say(f"iSCSI: several source OSes with different initiator names "
            f"({', '.join(sorted(names))}); using {chosen.initiator_name} from "
            f"{chosen.device or chosen.root}")
    return attach(chosen, iscsi_ip=iscsi_ip, say=say)


__all__ = ["IscsiAttachment", "IscsiError", "attach", "auto_attach", "find_identities",
           "manual_identity"]
