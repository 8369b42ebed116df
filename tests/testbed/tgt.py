"""A throwaway tgtd (Linux SCSI target framework) iSCSI target for tests.

One target, LUNs backed by plain files, an ACL bound to one initiator name
(that is what a storage array does: only the source server's own IQN gets in)
and optional incoming (and outgoing, for mutual CHAP) CHAP accounts.

Each instance has its own management port (-C), so several can run at once
next to a system tgtd; it listens on 127.0.0.1, which QEMU user networking
guests reach as 10.0.2.2.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

from agent.runcmd import run
from .procs import free_port, start_daemon


def _free_control_port() -> int:
    # tgtd's management socket is an abstract unix socket named after this
    # number; any number nobody else uses will do.
    for n in range(20000 + os.getpid() % 10000, 65000):
        if not os.path.exists(f"/var/run/tgtd.ipc_abstract_namespace.{n}") and _unused_abstract(n):
            return n
    raise RuntimeError("no free tgtd control port")


def _unused_abstract(n: int) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"\0/var/run/tgtd.ipc_abstract_namespace.{n}")
        return False
    except OSError:
        return True
    finally:
        s.close()


@dataclass
class Chap:
    user: str
    secret: str      # tgtd: 12-16 characters for interoperability (RFC 3720 wants >= 12)


@dataclass
class TgtTarget:
    iqn: str
    luns: list[str] = field(default_factory=list)      # backing files, LUN 1, 2, ...
    initiator_names: list[str] = field(default_factory=list)   # ACL; empty: nobody by name
    # ACL by address. tgtd 1.0.85 admits an initiator whose address OR name is
    # listed (measured), so "ALL" here would open the target to every name.
    initiator_addresses: list[str] = field(default_factory=list)
    incoming: Chap | None = None     # the initiator authenticates to the target
    outgoing: Chap | None = None     # mutual CHAP: the target authenticates back
    tid: int = 1


class Tgtd:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 workdir: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.control_port = 0
        self.workdir = workdir or tempfile.mkdtemp(prefix="coldclone-tgt-", dir="/tmp")
        self.proc: subprocess.Popen | None = None
        self.targets: list[TgtTarget] = []
        self.log_path = os.path.join(self.workdir, "tgtd.log")

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def adm(self, *args: str, check: bool = True, secrets: tuple[str, ...] = ()):
        return run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args],
                   check=check, timeout=30, secrets=secrets)

    def start(self) -> "Tgtd":
        tgtd = shutil.which("tgtd") or "/usr/sbin/tgtd"
        if not os.path.exists(tgtd):
            raise RuntimeError("tgtd is not installed (apt-get install tgt)")
        self.control_port = _free_control_port()
        # -f: foreground, its own process we can stop; logs to stderr. Up means the portal
        # listens and the control port answers tgtadm.
        self.proc = start_daemon(
            [tgtd, "-f", "-C", str(self.control_port), "--iscsi", f"portal={self.host}:{self.port}"],
            "tgtd", (self.host, self.port), self.log_path, output=self.log_path,
            ready=lambda: self.adm("--mode", "sys", "--op", "show", check=False).returncode == 0)
        return self

    def add_target(self, t: TgtTarget) -> TgtTarget:
        t.tid = len(self.targets) + 1
        self.adm("--op", "new", "--mode", "target", "--tid", str(t.tid), "-T", t.iqn)
        for n, path in enumerate(t.luns, 1):
            self.adm("--op", "new", "--mode", "logicalunit", "--tid", str(t.tid),
                     "--lun", str(n), "-b", path)
        for name in t.initiator_names:
            self.adm("--op", "bind", "--mode", "target", "--tid", str(t.tid),
                     "--initiator-name", name)
        for addr in t.initiator_addresses:
            self.adm("--op", "bind", "--mode", "target", "--tid", str(t.tid),
                     "--initiator-address", addr)
        if t.incoming:
            self._account(t.tid, t.incoming, outgoing=False)
        if t.outgoing:
            self._account(t.tid, t.outgoing, outgoing=True)
        self.targets.append(t)
        return t

    def _account(self, tid: int, chap: Chap, outgoing: bool) -> None:
        self.adm("--op", "new", "--mode", "account", "--user", chap.user,
                 "--password", chap.secret, secrets=(chap.secret,))
        self.adm("--op", "bind", "--mode", "account", "--tid", str(tid), "--user", chap.user,
                 *(["--outgoing"] if outgoing else []))

    def show(self) -> str:
        return self.adm("--op", "show", "--mode", "target").stdout

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # tgtd ignores SIGTERM while targets exist: drop them (sessions
            # and all), then ask the daemon itself to exit.
            for t in self.targets:
                self.adm("--op", "delete", "--mode", "target", "--tid", str(t.tid), "--force",
                         check=False)
            run(["tgtadm", "-C", str(self.control_port), "--op", "delete", "--mode", "system"],
                check=False, timeout=30)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Tgtd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- a tiny iSCSI login client ----------------------------------------------------
# The host kernel has no iSCSI initiator, so to check what tgtd answers (ACL,
# CHAP) without a VM, speak the first login phase of RFC 3720 ourselves:
# security negotiation with CHAP (MD5), up to the target's login status.

@dataclass
class LoginAnswer:
    status_class: int
    status_detail: int
    keys: dict[str, str]

    @property
    def status(self) -> str:
        return f"0x{self.status_class:02x}{self.status_detail:02x}"


def _pdu(flags: int, keys: dict[str, str], itt: int, cmdsn: int, exp_statsn: int) -> bytes:
    import struct

    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in keys.items())
    bhs = bytearray(48)
    bhs[0] = 0x43                                 # immediate + Login Request
    bhs[1] = flags
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[8:14] = bytes([0x40, 0x00, 0x01, 0x37, 0x00, 0x00])   # ISID: random-type qualifier
    struct.pack_into(">IHxxII", bhs, 16, itt, 0, cmdsn, exp_statsn)
    return bytes(bhs) + data + b"\0" * (-len(data) % 4)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("target closed the connection")
        buf += chunk
    return buf


def _answer(sock: socket.socket) -> tuple[LoginAnswer, int]:
    bhs = _recv_exact(sock, 48)
    length = int.from_bytes(bhs[5:8], "big")
    data = _recv_exact(sock, length + (-length % 4))[:length]
    keys = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            keys[k] = v
    statsn = int.from_bytes(bhs[24:28], "big")
    return LoginAnswer(bhs[36], bhs[37], keys), statsn


def login_probe(host: str, port: int, initiator: str, target: str,
                chap: Chap | None = None, timeout: float = 10) -> LoginAnswer:
    """Log in (security phase only) and return the target's status: 0x0000 is
    accepted, 0x0201 authentication failed, 0x0202 forbidden, 0x0203 not found."""
    import hashlib

    T, CSG0_NSG1 = 0x80, 0x01
    with socket.create_connection((host, port), timeout=timeout) as s:
        keys = {"InitiatorName": initiator, "SessionType": "Normal", "TargetName": target,
                "AuthMethod": "CHAP,None" if chap else "None"}
        s.sendall(_pdu(T | CSG0_NSG1, keys, 1, 1, 0))
        ans, statsn = _answer(s)
        if ans.status_class or not chap or ans.keys.get("AuthMethod") != "CHAP":
            return ans
        s.sendall(_pdu(CSG0_NSG1, {"CHAP_A": "5"}, 1, 1, statsn + 1))
        ans, statsn = _answer(s)
        if ans.status_class:
            return ans
        ident = int(ans.keys["CHAP_I"])
        challenge = bytes.fromhex(ans.keys["CHAP_C"][2:])
        resp = hashlib.md5(bytes([ident]) + chap.secret.encode() + challenge).hexdigest()
        s.sendall(_pdu(T | CSG0_NSG1, {"CHAP_N": chap.user, "CHAP_R": "0x" + resp}, 1, 1,
                       statsn + 1))
        ans, _ = _answer(s)
        return ans
