"""Set up the LIVE system's software initiator with the source server's identity.

Only the live system's own files are written (/etc/iscsi/initiatorname.iscsi,
open-iscsi's node and discovery records under /etc/iscsi). The source OS is
read elsewhere (sourceconfig.py), from read-only mounts, and never touched.
Every iscsiadm call goes through runcmd with the CHAP secrets in `secrets=`,
so they show as **** in logs and errors.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import re
import shutil
import time


from .. import netsetup
from ..discover.udevdb import read_attr
from ...errors import CommandError, UsageError
from ...runcmd import Result, run
from . import errors as E
from .model import Chap, IscsiTarget, NetInterface, make_portal, split_portal

log = logging.getLogger("coldclone.iscsi")

LIVE_INITIATORNAME = "/etc/iscsi/initiatorname.iscsi"
SYSFS = "/sys"
LOGIN_TIMEOUT = 10          # seconds per login attempt (node.conn[0].timeo.login_timeout)
LOGIN_RETRIES = 2           # node.session.initial_login_retry_max: fail fast, say why
LUN_WAIT = 45.0             # seconds for the LUN block devices to appear after login


# --- identity -----------------------------------------------------------------

def write_initiator_name(name: str, alias: str | None = None,
                         path: str = LIVE_INITIATORNAME) -> None:
    """The live system's initiator name file; iscsid reads it when it starts."""
    if not re.fullmatch(r"(iqn\.\d{4}-\d{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})",
                        name):
        raise UsageError(f"{name!r} is not an iSCSI initiator name (iqn.YYYY-MM.domain:..., "
                         f"eui.… or naa.…)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = ("## Written by coldclone: the source server's own initiator name, so the\n"
            "## storage array's ACLs admit this live system.\n"
            f"InitiatorName={name}\n")
    if alias:
        text += f"InitiatorAlias={alias}\n"
    tmp = path + ".coldclone-tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _systemd() -> bool:
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def restart_iscsid() -> None:
    """(Re)start iscsid so it reads the initiator name just written."""
    run(["modprobe", "iscsi_tcp"], check=False, timeout=60)
    if _systemd():
        run(["systemctl", "restart", "iscsid.service"], timeout=60,
            hint="iscsid (open-iscsi) could not be started on the live system")
    else:
        # No systemd (a container, a minimal rescue shell): stop ours, start a fresh one.
        run(["iscsiadm", "-k", "0"], check=False, timeout=30, quiet=True)
        time.sleep(0.5)
        run(["iscsid"], timeout=30, hint="iscsid (open-iscsi) could not be started")
    # iscsiadm talks to iscsid over an abstract socket: wait until it answers.
    deadline = time.monotonic() + 20
    while True:
        r = run(["iscsiadm", "-m", "session"], check=False, timeout=20, quiet=True)
        if r.returncode in (0, E.ERR_NO_OBJS_FOUND):
            return
        if time.monotonic() > deadline:
            raise CommandError(r.argv, r.returncode, r.stderr,
                               "iscsid does not answer on the live system")
        time.sleep(0.5)


# --- network --------------------------------------------------------------------

def setup_network(mode: str, original: NetInterface | None, portals: list[str],
                  say=print) -> netsetup.NetworkChange:
    """Give the live system an address from which the array accepts us, through the one
    live-network service (agent/netsetup.py); the change's undo() runs at logout.

    mode: original (the source's own address, added to the NIC with its MAC),
    dhcp (use / obtain a DHCP lease) or ADDRESS/PREFIX.
    """
    nic = netsetup.choose_by_mac(netsetup.list_nics(), original.mac if original else None)
    if nic is None:
        raise E.unreachable_error(None, ", ".join(portals) or "?",
                                  detail="the live system has no Ethernet interface")
    if mode == "original" and (original is None or not original.address):
        say("iSCSI: the source configuration has no static address for the storage "
            "network; using DHCP (set coldclone.iscsi_ip=ADDRESS/PREFIX to choose one)")
        mode = "dhcp"
    if mode == "dhcp":
        change = netsetup.NetworkChange(nic.name)
        run(["ip", "link", "set", "dev", nic.name, "up"], check=False, timeout=20)
        if nic.ipv4:
            change.local = nic.ipv4[0].split("/")[0]
        else:
            say(f"iSCSI: asking DHCP for an address on {nic.name}")
            netsetup.lease(nic.name, change)
        return change
    cidr = original.cidr if mode == "original" else mode
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError:
        raise UsageError(f"coldclone.iscsi_ip: {cidr!r} is not ADDRESS/PREFIX") from None
    if mode == "original":
        say("!" * 72)
        say(f"WARNING: the live system now uses the source server's own address {cidr} "
            f"on {nic.name}.")
        say("WARNING: the original server must be OFF (it is, if this live CD runs on it); "
            "if it runs elsewhere, the address conflict will disrupt its storage sessions.")
        say("!" * 72)
    change = netsetup.borrow_address(nic, str(iface),
                                     gateway=original.gateway if (mode == "original" and original) else None,
                                     reach=[split_portal(p)[0] for p in portals])
    say(f"iSCSI: {nic.name} has {iface} (mode {mode})")
    return change


# --- iscsiadm -------------------------------------------------------------------

def _secrets(chap: Chap | None) -> tuple[str, ...]:
    if chap is None:
        return ()
    return tuple(s.reveal() for s in (chap.password, chap.password_in) if s is not None)


def _auth_settings(prefix: str, chap: Chap | None) -> list[tuple[str, str]]:
    if chap is None or not chap.enabled:
        return [(f"{prefix}.authmethod", "None")]
    out = [(f"{prefix}.authmethod", "CHAP")]
    if chap.username:
        out.append((f"{prefix}.username", chap.username))
    if chap.password:
        out.append((f"{prefix}.password", chap.password.reveal()))
    if chap.mutual:
        out.append((f"{prefix}.username_in", chap.username_in))
        out.append((f"{prefix}.password_in", chap.password_in.reveal()))
    return out


def iscsiadm(args: list[str], *, chap: Chap | None = None, check: bool = True,
             timeout: float = 120) -> Result:
    return run(["iscsiadm", *args], check=check, timeout=timeout, secrets=_secrets(chap))


def parse_discovery(text: str) -> list[tuple[str, str, int | None]]:
    """`10.0.2.2:3260,1 iqn.2026-11.test:lun` lines -> (iqn, portal, tpgt)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(\[[^\]]+\]|[^\s,\[]+?):(\d+),(-?\d+)\s+(\S+)", line)
        if m:
            out.append((m.group(4), make_portal(m.group(1), int(m.group(2))), int(m.group(3))))
    return out


def _output(r: Result) -> str:
    return (r.stdout + "\n" + r.stderr).strip()


def discover(portal: str, chap: Chap | None, initiator: str) -> list[tuple[str, str, int | None]]:
    """SendTargets at portal: the targets the array shows to this initiator name.

    An ACL-filtered target is simply absent (tgtd, most arrays); the caller
    decides what that means. Raises for unreachable portals and CHAP failures.
    """
    base = ["-m", "discoverydb", "-t", "sendtargets", "-p", portal]
    iscsiadm(base + ["-o", "new"], check=False, timeout=30)
    for k, v in _auth_settings("discovery.sendtargets.auth", chap) + [
            ("discovery.sendtargets.timeo.login_timeout", str(LOGIN_TIMEOUT)),
            ("discovery.sendtargets.reopen_max", "1")]:
        iscsiadm(base + ["-o", "update", "-n", k, "-v", v], chap=chap, timeout=30)
    r = iscsiadm(base + ["--discover"], chap=chap, check=False, timeout=120)
    out = _output(r)
    if r.returncode == 0:
        return parse_discovery(r.stdout)
    kind = classify(r.returncode, out, discovery=True)
    if kind == "empty":
        return []
    if kind == "auth":
        raise E.auth_error("(discovery)", portal, initiator, chap.username if chap else None,
                           detail=out, mutual=bool(chap and chap.mutual), discovery=True)
    if kind == "unreachable":
        raise E.unreachable_error(None, portal, detail=out)
    raise CommandError(r.argv, r.returncode, r.stderr or r.stdout,
                       f"SendTargets discovery at {portal} failed")


def classify(rc: int, output: str, iscsid_log: str = "", *, discovery: bool = False,
             listed: bool | None = None) -> str:
    """What an iscsiadm failure means: auth / acl / unreachable / empty / other.

    iscsiadm reports the target's login status only as an exit code that
    lumps several together (24 for both 0x0201 authentication failure and
    0x0202 forbidden), so iscsid's own log line and whether SendTargets
    listed the target (tgtd and most arrays hide ACL-refused targets) break
    the tie.
    """
    text = f"{output}\n{iscsid_log}".lower()
    if rc in (E.ERR_TRANS, E.ERR_TRANS_TIMEOUT, E.ERR_PDU_TIMEOUT):
        return "unreachable"
    if discovery and (rc == E.ERR_NO_OBJS_FOUND or "no portals found" in text):
        return "empty"
    # iscsid's log names the target's login status (class/detail).
    if re.search(r"failed authorization|\(02/02\)|target not found|\(02/03\)", text):
        return "acl"
    if re.search(r"failed authentication|\(02/01\)", text):
        return "auth"
    if rc == E.ERR_LOGIN_AUTH_FAILED or "authorization failure" in text:
        # 24 alone: a target that did not list us refuses the name (ACL);
        # one that did list us refuses the secret.
        if discovery:
            return "auth"
        return "acl" if listed is False else "auth"
    if re.search(r"connection refused|no route to host|network is unreachable|timed out|"
                 r"cannot make connection", text):
        return "unreachable"
    if rc == E.ERR_FATAL_LOGIN or "non-retryable" in text:
        # 19: a login status the initiator must not retry. From tgtd that is
        # 0x0203 "target not found", its answer to an initiator the ACL refuses
        # (the target exists: the source logged in to it), as with most arrays.
        return "acl"
    return "other"


def iscsid_log(since: float) -> str:
    """iscsid's messages since a moment (the login status detail lives there)."""
    if not shutil.which("journalctl"):
        return ""
    # iscsid hands its messages to a logger process through shared memory:
    # they reach syslog/journald a moment after iscsiadm has returned.
    time.sleep(1.5)
    out = ""
    for sel in (["-t", "iscsid"], ["-u", "iscsid.service"]):
        r = run(["journalctl", "--no-pager", "-b", "-o", "cat", *sel,
                 f"--since=@{int(since) - 1}"], check=False, timeout=20, quiet=True)
        if r.returncode == 0 and r.stdout.strip():
            out = r.stdout
            break
    lines = [ln for ln in out.splitlines() if re.search(r"login|auth|reject|conn", ln, re.I)]
    return "\n".join(lines)[-2000:]


def login(target: IscsiTarget, chap: Chap | None, initiator: str, *,
          listed: bool | None = None, local: str | None = None) -> None:
    """Create the live node record for target and log in; raise a plain error on failure."""
    base = ["-m", "node", "-T", target.iqn, "-p", target.portal]
    iscsiadm(base + ["-o", "new"], check=False, timeout=30)
    settings = _auth_settings("node.session.auth", chap) + [
        ("node.startup", "manual"),
        ("node.session.initial_login_retry_max", str(LOGIN_RETRIES)),
        ("node.conn[0].timeo.login_timeout", str(LOGIN_TIMEOUT)),
    ]
    for k, v in settings:
        iscsiadm(base + ["-o", "update", "-n", k, "-v", v], chap=chap, timeout=30)
    started = time.time()
    r = iscsiadm(base + ["--login"], chap=chap, check=False, timeout=180)
    if r.returncode in (0, E.ERR_SESS_EXISTS):
        return
    out = _output(r)
    logtail = iscsid_log(started)
    kind = classify(r.returncode, out, logtail, listed=listed)
    detail = f"iscsiadm exit {r.returncode}: {out}" + (f"\niscsid: {logtail.strip()}"
                                                        if logtail.strip() else "")
    log.warning("login to %s at %s failed (%s): %s", target.iqn, target.portal, kind, detail)
    iscsiadm(base + ["-o", "delete"], check=False, timeout=30)
    if kind == "auth":
        raise E.auth_error(target.iqn, target.portal, initiator,
                           chap.username if chap else None, detail=detail,
                           mutual=bool(chap and chap.mutual))
    if kind == "acl":
        raise E.acl_error(target.iqn, target.portal, initiator, detail=detail, address=local)
    if kind == "unreachable":
        raise E.unreachable_error(target.iqn, target.portal, detail=detail, local=local)
    raise CommandError(r.argv, r.returncode, r.stderr or r.stdout,
                       f"iSCSI login to {target.iqn} at {target.portal} failed")


def logout(target: IscsiTarget) -> None:
    base = ["-m", "node", "-T", target.iqn, "-p", target.portal]
    r = iscsiadm(base + ["--logout"], check=False, timeout=60)
    if r.returncode not in (0, E.ERR_NO_OBJS_FOUND):
        log.warning("logout of %s at %s: exit %d %s", target.iqn, target.portal, r.returncode,
                    _output(r))
    iscsiadm(base + ["-o", "delete"], check=False, timeout=30)


def forget_discovery(portal: str) -> None:
    iscsiadm(["-m", "discoverydb", "-t", "sendtargets", "-p", portal, "-o", "delete"],
             check=False, timeout=30)


# --- the LUNs in sysfs ---------------------------------------------------------------


def find_session(iqn: str, portal: str, sysfs: str = SYSFS) -> str | None:
    """The sysfs device dir of the session logged in to iqn at portal (…/hostN/sessionM)."""
    for sdir in sorted(glob.glob(os.path.join(sysfs, "class/iscsi_session/session*"))):
        if read_attr(sdir, "targetname") != iqn:
            continue
        dev = os.path.realpath(os.path.join(sdir, "device"))
        name = os.path.basename(sdir)
        conn_ok = False
        for cdir in glob.glob(os.path.join(sysfs, f"class/iscsi_connection/connection{name[7:]}:*")):
            addr = read_attr(cdir, "persistent_address") or read_attr(cdir, "address")
            port = read_attr(cdir, "persistent_port") or read_attr(cdir, "port")
            if addr and make_portal(addr, int(port or 3260)) == portal:
                conn_ok = True
        if conn_ok or not glob.glob(os.path.join(sysfs, "class/iscsi_connection/*")):
            return dev
    return None


def session_luns(session_dev: str) -> list[tuple[int, str]]:
    """(LUN, block device name) under a session: sessionM/targetH:C:T/H:C:T:L/block/sdX."""
    out = []
    for blk in glob.glob(os.path.join(session_dev, "target*", "*:*:*:*", "block", "*")):
        hctl = os.path.basename(os.path.dirname(os.path.dirname(blk)))
        try:
            lun = int(hctl.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            continue
        out.append((lun, os.path.basename(blk)))
    return sorted(out)


def wait_luns(target: IscsiTarget, timeout: float = LUN_WAIT, settle: float = 2.0,
              sysfs: str = SYSFS) -> list[tuple[int, str]]:
    """Wait until the session's LUN block devices are there and stop changing."""
    deadline = time.monotonic() + timeout
    last: list[tuple[int, str]] = []
    stable_since = None
    while time.monotonic() < deadline:
        sess = find_session(target.iqn, target.portal, sysfs)
        now = session_luns(sess) if sess else []
        now = [(lun, name) for lun, name in now if os.path.exists(f"/dev/{name}")] \
            if sysfs == SYSFS else now
        if now != last:
            last, stable_since = now, time.monotonic()
        elif now and time.monotonic() - stable_since >= settle:
            return now
        time.sleep(0.25)
    if last:
        return last
    raise E.IscsiNoLunsError(
        f"logged in to iSCSI target {target.iqn} at {target.portal}, but no LUN appeared "
        f"within {timeout:.0f} s: check that the array maps LUNs to this initiator "
        f"(LUN masking / host group), not only the target",
        target=target.iqn, portal=target.portal)
