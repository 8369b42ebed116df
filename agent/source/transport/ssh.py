"""ssh://user@host:port/path: paramiko exec channel to `coldclone-receive` on the conversion server.

The server's host key is verified before anything is sent: against a pinned
SHA256 fingerprint (--hostkey / coldclone.hostkey=) or a known_hosts file.
An unknown or changed key is refused, and the message shows the fingerprint
and how to pin it. Nothing is ever accepted silently.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shlex
import socket
import threading
from typing import Sequence

import paramiko

from ...errors import ConnectionError_, HostKeyError
from .base import Connection, ReplyPump
from .url import TargetURL

log = logging.getLogger("coldclone.ssh")

# Bigger windows keep the pipe full on long fat links (10 GbE, WAN).
WINDOW = 16 << 20
MAX_PACKET = 1 << 15
# AES-GCM is the cheapest cipher paramiko drives through OpenSSL.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: SHA256:base64-without-padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def normalize_pin(pin: str) -> str:
    pin = pin.strip()
    if not pin.startswith("SHA256:"):
        pin = "SHA256:" + pin
    return pin.rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _pin_hint(url: TargetURL, key: paramiko.PKey, fp: str) -> str:
    return (
        f"the server {url.host}:{url.port} presents {key.get_name()} key {fp}. "
        f"Check it on the conversion server with `ssh-keygen -lf /etc/ssh/ssh_host_{_short(key)}_key.pub`; "
        f"if it matches, pin it with --hostkey {fp} (kernel command line: coldclone.hostkey={fp}) "
        f"or add it to the known_hosts file"
    )


def _short(key: paramiko.PKey) -> str:
    name = key.get_name()
    if "ed25519" in name:
        return "ed25519"
    if "ecdsa" in name:
        return "ecdsa"
    return "rsa"


def pins_of(hostkey: str | Sequence[str] | None) -> list[str]:
    """The pins given: one, or several (a wave's conversion servers; any one may match)."""
    if not hostkey:
        return []
    return [normalize_pin(p) for p in ([hostkey] if isinstance(hostkey, str) else hostkey)]


def verify_host_key(url: TargetURL, key: paramiko.PKey, pin: str | Sequence[str] | None,
                    known_hosts: str | None) -> str:
    """Return how the key was trusted, or raise HostKeyError. Several pins: the key must be one
    of them (each server of a wave presents its own)."""
    fp = fingerprint(key)
    pins = pins_of(pin)
    if pins:
        want = " or ".join(pins)
        if fp not in pins:
            raise HostKeyError(
                f"HOST KEY MISMATCH for {url.host}:{url.port}: pinned {want}, but the server "
                f"presents {key.get_name()} {fp}. Someone may be intercepting the connection, or "
                f"the server was reinstalled. Nothing was sent. If the server's key really "
                f"changed, verify it and pin the new one with --hostkey {fp} (kernel command line: coldclone.hostkey={fp})"
            )
        return f"pinned fingerprint {fp}"
    if not known_hosts:
        raise HostKeyError("unknown host key: no pinned fingerprint and no known_hosts file; " + _pin_hint(url, key, fp))
    hk = paramiko.HostKeys()
    try:
        hk.load(known_hosts)
    except FileNotFoundError:
        raise HostKeyError(
            f"unknown host key: known_hosts file {known_hosts} does not exist; " + _pin_hint(url, key, fp)
        ) from None
    except (OSError, paramiko.SSHException) as e:
        raise HostKeyError(f"cannot read known_hosts file {known_hosts}: {e}") from None
    name = known_hosts_name(url.host, url.port)
    entries = hk.lookup(name) or {}
    if not entries:
        raise HostKeyError(f"unknown host key: {name} is not in {known_hosts}; " + _pin_hint(url, key, fp))
    known = entries.get(key.get_name())
    if known is None:
        raise HostKeyError(
            f"unknown host key: {known_hosts} has {', '.join(entries.keys())} for {name} but the server "
            f"offered {key.get_name()}; " + _pin_hint(url, key, fp)
        )
    if known.asbytes() != key.asbytes():
        raise HostKeyError(
            f"HOST KEY CHANGED for {name}: {known_hosts} has {known.get_name()} {fingerprint(known)}, "
            f"the server presents {fp}. Someone may be intercepting the connection, or the server was "
            f"reinstalled. Nothing was sent. If the change is expected, remove the old entry "
            f"(ssh-keygen -R '{name}' -f {known_hosts}) or pin the new key with --hostkey {fp}"
        )
    return f"known_hosts {known_hosts}"


def load_identity(path: str, passphrase: str | None = None) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path, passphrase)
    except FileNotFoundError:
        raise ConnectionError_(f"identity key {path} does not exist") from None
    except paramiko.PasswordRequiredException:
        raise ConnectionError_(f"identity key {path} is encrypted; give its passphrase or use an unencrypted key") from None
    except (paramiko.SSHException, ValueError, OSError) as e:
        raise ConnectionError_(f"cannot load identity key {path}: {e} (ed25519, ECDSA and RSA keys in OpenSSH format work)") from None


def _open_socket(url: TargetURL, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((url.host, url.port), timeout=timeout)
    except socket.gaierror as e:
        raise ConnectionError_(f"cannot resolve {url.host}: {e.strerror}; check the host name or use an IP address") from None
    except socket.timeout:
        raise ConnectionError_(
            f"no answer from {url.host}:{url.port} within {timeout:.0f} s; check the network "
            f"(address, cable, VLAN, firewall)"
        ) from None
    except OSError as e:
        raise ConnectionError_(
            f"cannot connect to {url.host}:{url.port}: {e.strerror}; is sshd running there and is the port right?"
        ) from None
    sock.settimeout(None)
    return sock


def _start_client(url: TargetURL, timeout: float) -> paramiko.Transport:
    t = paramiko.Transport(_open_socket(url, timeout))
    opts = t.get_security_options()
    opts.ciphers = tuple(c for c in CIPHERS if c in opts.ciphers) or opts.ciphers
    try:
        t.banner_timeout = timeout
        t.start_client(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as e:
        t.close()
        raise ConnectionError_(f"SSH handshake with {url.host}:{url.port} failed: {e}; "
                               f"is this the conversion server's sshd?") from None
    return t


def server_host_key(url: TargetURL, timeout: float = 10.0) -> tuple[str, str]:
    """(key type, SHA256 fingerprint) of the server's host key, trusting and sending nothing:
    what an operator compares with the server's `ssh-keygen -lf` before confirming it."""
    t = _start_client(url, timeout)
    try:
        key = t.get_remote_server_key()
        return key.get_name(), fingerprint(key)
    finally:
        t.close()


def handshake(url: TargetURL, *, identity: str | None = None, hostkey: str | Sequence[str] | None = None,
              known_hosts: str | None = None, password: str | None = None,
              timeout: float = 20.0) -> tuple[paramiko.Transport, str]:
    """The one SSH handshake: connect, verify the host key (pin or known_hosts), authenticate.
    Returns the transport and how the host key was trusted. A capture opens the receiver on
    it; the TUI's connection test stops there."""
    t = _start_client(url, timeout)
    key = t.get_remote_server_key()
    try:
        how = verify_host_key(url, key, hostkey, known_hosts)
    except HostKeyError:
        t.close()
        raise
    log.info("host key of %s:%d trusted by %s", url.host, url.port, how)
    try:
        if identity:
            pkey = load_identity(identity)
            t.auth_publickey(url.user, pkey)
        elif password is not None:
            log.warning(
                "password authentication to %s: prefer a key installed with a forced command "
                "(command=\"coldclone-receive --root ...\",restrict), so a lost ISO gives no shell",
                url.host,
            )
            t.auth_password(url.user, password)
        else:
            raise ConnectionError_("no credentials: give --identity KEY (or --password-env VAR)")
    except paramiko.AuthenticationException:
        t.close()
        what = f"key {identity}" if identity else "the password"
        raise ConnectionError_(
            f"{url.user}@{url.host} refused {what}: put the public key in that user's "
            f"authorized_keys on the conversion server (with command=\"coldclone-receive --root ...\",restrict)"
        ) from None
    except paramiko.SSHException as e:
        t.close()
        raise ConnectionError_(f"SSH authentication to {url.host} failed: {e}") from None
    except BaseException:
        t.close()
        raise
    return t, how


class SshConnection(Connection):
    def __init__(
        self,
        url: TargetURL,
        *,
        identity: str | None = None,
        hostkey: str | Sequence[str] | None = None,
        known_hosts: str | None = None,
        password: str | None = None,
        timeout: float = 20.0,
    ):
        self.url = url
        self.description = str(url)
        self.transport = t = handshake(url, identity=identity, hostkey=hostkey, known_hosts=known_hosts,
                                       password=password, timeout=timeout)[0]
        try:
            self.chan = t.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET)
            cmd = "coldclone-receive"
            if url.path and url.path != "/":
                cmd += " --root " + shlex.quote(url.path)
            self.chan.exec_command(cmd)
        except paramiko.SSHException as e:
            t.close()
            raise ConnectionError_(f"cannot start coldclone-receive on {url.host}: {e}") from None
        self.pump = ReplyPump(self.chan.makefile("rb"))
        self._err = b""
        self._et = threading.Thread(target=self._drain_err, daemon=True)
        self._et.start()

    def _drain_err(self) -> None:
        f = self.chan.makefile_stderr("rb")
        chunks = []
        try:
            for b in iter(lambda: f.read(4096), b""):
                chunks.append(b)
        except Exception:
            pass
        self._err = b"".join(chunks)

    def send(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise BrokenPipeError(str(e) or "SSH channel closed") from None

    def dead_link_after(self, seconds: float) -> None:
        # TCP_USER_TIMEOUT: data unacknowledged this long closes the connection, so a send blocked on
        # a dead link fails instead of waiting for TCP's retries (15 minutes and more). A receiver
        # that is alive but busy (converting a disk) still acknowledges (zero-window probes): no
        # false alarm.
        try:
            self.transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        except (AttributeError, OSError) as e:
            log.warning("cannot set TCP_USER_TIMEOUT: %s", e)

    def close_write(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def stderr_text(self) -> str:
        self._et.join(2)
        return self._err.decode(errors="replace")

    def exit_status(self, timeout: float = 10.0) -> int | None:
        if self.chan.status_event.wait(timeout):
            return self.chan.exit_status
        return None

    def close(self) -> None:
        try:
            self.chan.close()
        finally:
            self.transport.close()


def connect(url: TargetURL, **kw) -> SshConnection:
    return SshConnection(url, **kw)


def default_known_hosts() -> str | None:
    p = os.path.expanduser("~/.ssh/known_hosts")
    return p if os.path.exists(p) else None
