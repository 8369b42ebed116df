"""The conversion server over the OpenSSH client, with its host key pinned before anything is sent.

A source server's running OS has `ssh` and `ssh-keyscan` (openssh-client / openssh-clients) but
not paramiko, so this is the agent's transport (agent/source/transport/ssh.py) done with them:

1. `ssh-keyscan -p PORT HOST` fetches the server's host keys, trusting nothing;
2. each key's SHA256 fingerprint is computed here (base64 of the sha256 of the key blob, without
   '=' padding: what `ssh-keygen -lf` prints), and only the key matching `--hostkey` is written
   to a private known_hosts in a private temporary directory (no match: HostKeyError, nothing
   sent, the fingerprints seen named);
3. every session is `ssh -o UserKnownHostsFile=<that file> -o StrictHostKeyChecking=yes
   -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -i KEY -o IdentitiesOnly=yes`: ssh itself
   refuses any other key, also one swapped in between the scan and the session.

The stream goes to ssh's stdin; the receiver's replies are JSON lines on its stdout, read on a
thread into a queue.

Standard library only, Python 3.6 syntax (this file runs on the source's own python3).
"""

import base64
import hashlib
import json
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from urllib.parse import unquote, urlsplit

from ..errors import ConnectionError_, HostKeyError, ServerError, UsageError

log = logging.getLogger("coldclone.sync")

KEYSCAN_TIMEOUT = 10
CONNECT_TIMEOUT = 20


class Target(object):
    """ssh://user@host[:port][/path]: path is the root the receiver writes into, inside its forced
    root (as `coldclone capture --to` takes it)."""

    def __init__(self, user, host, port=22, path=""):
        self.user = user
        self.host = host
        self.port = port
        self.path = path

    def __str__(self):
        port = ":%d" % self.port if self.port != 22 else ""
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "ssh://%s@%s%s%s" % (self.user, host, port, self.path or "/")

    @property
    def known_hosts_name(self):
        """How known_hosts names this host (ssh-keygen -F's form)."""
        return self.host if self.port == 22 else "[%s]:%d" % (self.host, self.port)


def parse_target(text):
    try:
        u = urlsplit(text)
        port = u.port or 22
    except ValueError:
        raise UsageError("--to %r: expected ssh://user@host[:port]/path (an IPv6 address in brackets, "
                         "a port from 1 to 65535)" % text) from None
    if u.scheme != "ssh":
        raise UsageError("--to %r: a sync goes to a conversion server over SSH: ssh://user@host[:port]/path "
                         "(got scheme %r)" % (text, u.scheme or "none"))
    if u.password is not None:
        raise UsageError("--to: never put a password in the URL (it ends up in logs and process lists); "
                         "the sync authenticates with --identity KEY")
    if not u.hostname or not u.username:
        raise UsageError("--to %r: give the user and the host: ssh://user@host[:port]/path" % text)
    if u.query or u.fragment:
        raise UsageError("--to %r: an ssh:// target takes no ?query or #fragment" % text)
    return Target(unquote(u.username), u.hostname, port, unquote(u.path))


def normalize_pin(pin):
    pin = (pin or "").strip()
    if not pin.startswith("SHA256:"):
        pin = "SHA256:" + pin
    return pin.rstrip("=")


def fingerprint(blob):
    """OpenSSH's SHA256 fingerprint of a public key blob (the base64 field of a known_hosts line,
    decoded), as `ssh-keygen -lf` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_keyscan(text):
    """(key type, base64 blob, fingerprint) of each key in ssh-keyscan's output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (ValueError, TypeError):
            continue
        out.append((parts[1], parts[2], fingerprint(blob)))
    return out


def run_tool(argv, timeout, input_bytes=None):
    """An external command, logged with its argv, exit code and stderr (the sync file's own
    agent.runcmd.run: it carries no module of the agent beyond the wire). (code, stdout, stderr)."""
    try:
        p = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except FileNotFoundError:
        raise ConnectionError_("%s is not installed on this server: install the OpenSSH client "
                               "(openssh-client on Debian/Ubuntu, openssh-clients on RHEL)" % argv[0]) from None
    except subprocess.TimeoutExpired:
        raise ConnectionError_("%s did not answer within %d s; check the network and the address"
                               % (" ".join(argv), timeout)) from None
    err = p.stderr.decode(errors="replace")
    log.debug("ran %s: exit %d%s", " ".join(argv), p.returncode, (": " + err.strip()[-500:]) if err.strip() else "")
    return p.returncode, p.stdout.decode(errors="replace"), err


class Pinned(object):
    """A conversion server whose host key is pinned: a private known_hosts holding only the key
    whose fingerprint is `pin`, in a temporary directory removed when the sync ends."""

    def __init__(self, target, identity, pin):
        self.target = target
        self.identity = identity
        self.pin = normalize_pin(pin)
        self.dir = None
        self.known_hosts = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="coldclone-sync-")   # 0700
        try:
            self._pin()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _pin(self):
        t = self.target
        code, out, err = run_tool(["ssh-keyscan", "-p", str(t.port), "-T", str(KEYSCAN_TIMEOUT), t.host],
                                  timeout=KEYSCAN_TIMEOUT * 4)
        keys = parse_keyscan(out)
        if not keys:
            why = " | ".join(line for line in err.strip().splitlines() if not line.startswith("#"))[-300:]
            raise ConnectionError_("no SSH host key from %s:%d (ssh-keyscan exit %d%s): is sshd running there, "
                                   "and are the address and port right?" % (t.host, t.port, code,
                                                                            ": " + why if why else ""))
        match = [k for k in keys if k[2] == self.pin]
        if not match:
            seen = ", ".join("%s %s" % (kt, fp) for kt, _, fp in keys)
            raise HostKeyError(
                "HOST KEY MISMATCH for %s:%d: pinned %s, but the server presents %s. Nothing was sent. "
                "Someone may be intercepting the connection, or the pin is wrong or old: on the conversion "
                "server run `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` (or the key `coldclone-server "
                "init` printed as hostkey=) and pass that with --hostkey" % (t.host, t.port, self.pin, seen))
        ktype, b64, fp = match[0]
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write("%s %s %s\n" % (t.known_hosts_name, ktype, b64))
        log.info("host key of %s:%d pinned: %s %s", t.host, t.port, ktype, fp)

    def argv(self):
        t = self.target
        cmd = "coldclone-receive"
        if t.path and t.path != "/":
            cmd += " --root " + shlex.quote(t.path)
        return ["ssh", "-T", "-p", str(t.port), "-i", self.identity,
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "UserKnownHostsFile=" + self.known_hosts, "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "CheckHostIP=no",
                "-o", "ConnectTimeout=%d" % CONNECT_TIMEOUT,
                # a dead link ends the session in about a minute instead of TCP's 15
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "Compression=no",
                "-o", "ForwardAgent=no", "-o", "ClearAllForwardings=yes", "-o", "LogLevel=ERROR",
                "%s@%s" % (t.user, t.host), cmd]

    def open(self):
        return Session(self.argv(), str(self.target))


class Session(object):
    """One `ssh ... coldclone-receive` process: send() writes the stream, replies come typed as
    the dicts the receiver wrote (next_reply)."""

    def __init__(self, argv, description):
        self.description = description
        log.debug("running %s", " ".join(argv))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise ConnectionError_("ssh is not installed on this server: install the OpenSSH client") from None
        self.replies = queue.Queue()
        self.error = None          # the receiver's first error reply
        self.pending = []          # replies poll() took off the queue, for next_reply
        self.closed = False
        self._err = []
        self._rt = threading.Thread(target=self._read_replies, name="cc-sync-replies", daemon=True)
        self._et = threading.Thread(target=self._read_stderr, name="cc-sync-stderr", daemon=True)
        self._rt.start()
        self._et.start()

    def _read_replies(self):
        try:
            for line in iter(self.proc.stdout.readline, b""):
                try:
                    msg = json.loads(line.decode())
                except ValueError:
                    msg = None
                if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
                    log.info("conversion server said: %s", line.decode(errors="replace").strip()[:300])
                    continue
                log.debug("receiver: %s", {k: v for k, v in msg.items() if k != "digests"})
                self.replies.put(msg)
        except (OSError, ValueError) as e:
            log.debug("reply stream ended: %s", e)
        finally:
            self.replies.put(None)

    def _read_stderr(self):
        for chunk in iter(lambda: self.proc.stderr.read(4096), b""):
            self._err.append(chunk)

    def stderr_text(self):
        self._et.join(2)
        return b"".join(self._err).decode(errors="replace")

    # ------------------------------------------------------------- sending

    def send(self, data):
        self.poll()
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise self.after_send_failure(e) from None

    def close_write(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def close(self):
        """End the session: ssh gets EOF (the receiver sees the stream end), then is stopped."""
        self.close_write()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # ------------------------------------------------------------- replies

    def _take(self, msg):
        if msg is None:
            self.closed = True
            return None
        if msg.get("event") == "error":
            self.error = msg
            raise self.as_error()
        return msg

    def poll(self):
        """Raise at once if the receiver has already reported an error (or hung up)."""
        while True:
            try:
                msg = self.replies.get_nowait()
            except queue.Empty:
                return
            if self._take(msg) is None:
                raise self.gone()
            self.pending.append(msg)

    def next_reply(self, timeout):
        """The next reply; ServerError after `timeout` seconds, the receiver's error as ServerError."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError("no answer from the conversion server within %.0f s" % timeout, code="timeout")
            try:
                msg = self.replies.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if self._take(msg) is None:
                raise self.gone()
            return msg

    def as_error(self):
        m = self.error or {}
        text = m.get("message") or "failed"
        if not text.startswith("conversion server"):
            text = "conversion server: " + text
        return ServerError(text, code=m.get("code") or "server_error")

    def drain(self, timeout):
        """Replies until the receiver hangs up: its error if it gave one, else why it went (None:
        still talking after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.replies.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if self._take(msg) is None:
                    return self.gone()
            except ServerError as e:
                return e
        return None

    def after_send_failure(self, exc):
        """A write to ssh failed: the receiver usually said why before it hung up."""
        return self.drain(timeout=5) or ConnectionError_(
            "connection to the conversion server lost while sending (%s); check the network, then run "
            "the same sync again: it continues from what the server stored" % exc)

    def gone(self):
        """The reply stream ended without a verdict: say what we know."""
        if self.error:
            return self.as_error()
        try:
            status = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        err = self.stderr_text().strip()
        last = " | ".join(err.splitlines()[-3:])
        if status == 255:
            if re.search(r"Permission denied|publickey", err):
                return ConnectionError_(
                    "%s refused the key (%s): put its public key in that user's authorized_keys on the "
                    "conversion server, with command=\"coldclone-receive --root ...\",restrict (coldclone-server "
                    "init does)" % (self.description, last))
            if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION" in err:
                return HostKeyError("%s: ssh refused the host key (%s); nothing was sent" % (self.description, last))
            return ConnectionError_("cannot reach the conversion server %s (ssh: %s); check the network, the "
                                    "address and the port, then run the sync again" % (self.description, last))
        if status == 127 or re.search(r"coldclone-receive.*(not found|No such file)", err):
            return ServerError("coldclone-receive is not installed on the conversion server (%s); install it "
                               "there (pip install coldclone) and use a forced-command key" % last,
                               code="no_receiver")
        if status is not None and err:
            return ServerError("conversion server ended the session (exit %d): %s" % (status, last))
        return ConnectionError_("connection to the conversion server lost (no verdict from the receiver%s); "
                                "check the network and the server, then run the same sync again"
                                % ("; its last words: " + last if last else ""))
