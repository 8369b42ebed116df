"""One capture configuration, whichever front end fills it.

The headless runner reads it from the kernel command line (`coldclone.KEY=VALUE`
words), `coldclone capture` from flags, the TUI from its forms. Each key is
checked here, once: a typo or a bad value is a UsageError that names the key,
what was wrong and what is accepted (docs/cli.md holds the table). Nothing the
operator typed is ever replaced by a silent default.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field, fields

from .capture.stream import MODES  # the capture engine's modes: one declaration
from .errors import UsageError
from .netsetup import parse_ip_spec

PREFIX = "coldclone."
ON_DONE = ("poweroff", "reboot", "shell")
FORMATS = ("qcow2", "raw")
ISCSI = ("auto", "off")
# Defaults a build can bake into the ISO (make iso IDENTITY=... HOSTKEY=...).
BAKED_IDENTITY = "/etc/coldclone/identity"
BAKED_HOSTKEY = "/etc/coldclone/hostkey"


@dataclass
class CaptureConfig:
    server: str | None = None          # ssh://user@host[:port]/path, file:///path, nfs://host/export/path
    identity: str | None = None        # private key: a path, or an https:// URL fetched at start
    hostkey: str | None = None         # SHA256:... pin of the conversion server's host key
    known_hosts: str | None = None
    disks: list[str] | None = None     # None: every disk discovery offers
    exclude: list[str] = field(default_factory=list)
    mode: str = "nonzero"
    compress: str = "zstd:1"
    format: str = "qcow2"
    capture_id: str | None = None
    iscsi: str = "auto"
    iscsi_ip: str = "original"         # original | dhcp | ADDRESS/PREFIX
    ip: str | None = None              # network of the live system: dhcp | [IFACE:]ADDRESS/PREFIX[,gw=..][,dns=..]
    on_done: str = "poweroff"
    pre: str | None = None             # hooks: a path on the live medium, or an http(s) URL
    post: str | None = None
    fail: str | None = None
    estimate_only: bool = False
    calibrate: float = 3.0             # seconds of calibration probe before the estimate; 0: skip
    progress: float = 10.0             # seconds between headless progress lines
    timeout: float = 20.0              # connect timeout, seconds
    debug: bool = False

    def check(self) -> "CaptureConfig":
        """Cross-key checks, once every key is in."""
        if not self.server and not self.estimate_only:
            raise UsageError(f"{PREFIX}server= is missing: say where the images go, "
                             f"e.g. {PREFIX}server=ssh://coldclone@10.0.0.5/srv/coldclone")
        if self.server:
            from .transport.url import parse_target

            url = parse_target(self.server)
            if url.scheme == "ssh" and not self.identity:
                raise UsageError(f"{PREFIX}server={self.server} needs a key: give {PREFIX}identity= "
                                 f"(a path on the live medium or an https:// URL) or build the ISO "
                                 f"with make iso IDENTITY=...")
        if self.disks is not None and not self.disks:
            raise UsageError(f"{PREFIX}disks= is empty: write all, or a list such as sda,md127")
        return self


def _word_list(key: str, value: str) -> list[str]:
    items = [v.strip() for v in value.split(",")]
    if not value or any(not v for v in items):
        raise UsageError(f"{PREFIX}{key}={value!r}: write a comma-separated list such as sda,sdb")
    for v in items:
        if not re.fullmatch(r"[A-Za-z0-9_./:!-]+", v):
            raise UsageError(f"{PREFIX}{key}: {v!r} is not a disk name (e.g. sda, md127, cciss/c0d0, /dev/sdb)")
    return items


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        more = f" (did you mean {hint[0]}?)" if hint else ""
        raise UsageError(f"{PREFIX}{key}={value!r} is not valid{more}: use {' or '.join(choices)}")
    return value


def _seconds(key: str, value: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except ValueError:
        raise UsageError(f"{PREFIX}{key}={value!r}: write a number of seconds ({lo:g}-{hi:g})") from None
    if not lo <= v <= hi:
        raise UsageError(f"{PREFIX}{key}={value!r}: must be between {lo:g} and {hi:g} seconds")
    return v


def _flag(key: str, value: str | None) -> bool:
    if value is None or value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise UsageError(f"{PREFIX}{key}={value!r}: write {PREFIX}{key} alone, or =1 / =0")


def _server(value: str) -> str:
    from .transport.url import parse_target

    parse_target(value)  # raises a UsageError naming what is wrong with it
    return value


def _mode(value: str) -> str:
    return _choice("mode", value, MODES)


def _hostkey(value: str) -> str:
    from .transport.ssh import normalize_pin

    pin = normalize_pin(value)
    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", pin):
        raise UsageError(f"{PREFIX}hostkey={value!r} is not a SHA256 fingerprint: copy it from "
                         f"`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the conversion "
                         f"server (SHA256: and 43 characters)")
    return pin


def _compress(value: str) -> str:
    from .capture.stream import parse_compress

    parse_compress(value)
    return value


def _iscsi_ip(value: str) -> str:
    if value in ("original", "dhcp"):
        return value
    try:
        if "/" in value and ipaddress.IPv4Interface(value).network.prefixlen < 32:
            return value
    except ValueError:
        pass
    raise UsageError(f"{PREFIX}iscsi_ip={value!r}: use original (the source server's own address), "
                     f"dhcp, or ADDRESS/PREFIX such as 192.168.10.21/24")


def _ip(value: str) -> str:
    # checked now, with every other key, not after the pre hook has run
    parse_ip_spec(value, what=f"{PREFIX}ip=")
    return value


def _hook(key: str, value: str) -> str:
    if value.startswith(("/", "http://", "https://")):
        return value
    raise UsageError(f"{PREFIX}{key}={value!r}: a hook is an absolute path on the live system "
                     f"(e.g. /run/live/medium/hooks/{key}.sh) or an http(s):// URL")


def _identity(value: str) -> str:
    if value.startswith("https://") or value.startswith("/"):
        return value
    if value.startswith("http://"):
        raise UsageError(f"{PREFIX}identity={value!r}: a private key is only fetched over https://, "
                         f"never plain http (anyone on the wire could copy it)")
    raise UsageError(f"{PREFIX}identity={value!r}: give an absolute path on the live medium "
                     f"(e.g. /run/live/medium/coldclone/id_ed25519) or an https:// URL")


def _capture_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value) or ".." in value:
        raise UsageError(f"{PREFIX}capture_id={value!r}: letters, digits, '.', '_' and '-' only "
                         f"(at most 128, starting with a letter or digit)")
    return value


# key -> the parser of its value (raises UsageError). Keys without a value are in _FLAGS.
_KEYS = {
    "server": _server,
    "identity": _identity,
    "hostkey": _hostkey,
    "known_hosts": lambda v: v,
    "disks": lambda v: None if v == "all" else _word_list("disks", v),
    "exclude": lambda v: _word_list("exclude", v),
    "mode": _mode,
    "compress": _compress,
    "format": lambda v: _choice("format", v, FORMATS),
    "capture_id": _capture_id,
    "iscsi": lambda v: _choice("iscsi", v, ISCSI),
    "iscsi_ip": _iscsi_ip,
    "ip": _ip,
    "on_done": lambda v: _choice("on_done", v, ON_DONE),
    "pre": lambda v: _hook("pre", v),
    "post": lambda v: _hook("post", v),
    "fail": lambda v: _hook("fail", v),
    "calibrate": lambda v: _seconds("calibrate", v, 0, 120),
    "progress": lambda v: _seconds("progress", v, 1, 3600),
    "timeout": lambda v: _seconds("timeout", v, 1, 600),
}
_FLAGS = ("estimate_only", "debug")
# Read by the live system's own scripts, not by the agent; known so they are not typos.
LIVE_KEYS = ("smoke", "smoke_done", "tui")

ALL_KEYS = tuple(_KEYS) + _FLAGS


def _unknown(key: str) -> UsageError:
    hint = difflib.get_close_matches(key, ALL_KEYS + LIVE_KEYS, n=1, cutoff=0.6)
    more = f"; did you mean {PREFIX}{hint[0]}?" if hint else ""
    return UsageError(f"unknown kernel command line key {PREFIX}{key}{more} "
                      f"(known: {', '.join(ALL_KEYS)})")


def kernel_words(text: str) -> list[str]:
    """A kernel command line split into words, quotes honoured as the kernel does."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise UsageError(f"kernel command line: {e} (an unbalanced quote?)") from None


def cmdline_words(text: str) -> list[tuple[str, str | None]]:
    """The coldclone.* words of a kernel command line, as (key, value or None)."""
    out = []
    for w in kernel_words(text):
        if not w.startswith(PREFIX):
            continue
        key, eq, value = w[len(PREFIX):].partition("=")
        out.append((key, value if eq else None))
    return out


def from_cmdline(text: str, *, baked_root: str = "/") -> CaptureConfig:
    """Parse the coldclone.* words; every error is collected and reported at once."""
    cfg = CaptureConfig()
    apply_baked(cfg, baked_root)
    errors: list[str] = []
    seen: dict[str, str | None] = {}
    for key, value in cmdline_words(text):
        if key in seen and seen[key] != value:
            errors.append(f"{PREFIX}{key} is given twice ({seen[key]!r} and {value!r}): keep one")
            continue
        seen[key] = value
        try:
            if key in LIVE_KEYS:
                continue
            if key in _FLAGS:
                setattr(cfg, key, _flag(key, value))
            elif key in _KEYS:
                if value is None or value == "":
                    raise UsageError(f"{PREFIX}{key} needs a value: write {PREFIX}{key}=...")
                setattr(cfg, key, _KEYS[key](value))
            else:
                raise _unknown(key)
        except UsageError as e:
            msg = str(e)
            # Messages from shared parsers (target URL, host key pin) do not know the key.
            errors.append(msg if f"{PREFIX}{key}" in msg else f"{PREFIX}{key}: {msg}")
    if errors:
        raise UsageError("; ".join(errors) if len(errors) == 1 else
                         "the kernel command line has %d problems:\n  - %s" % (len(errors), "\n  - ".join(errors)))
    return cfg


def apply_baked(cfg: CaptureConfig, root: str) -> None:
    identity = os.path.join(root, BAKED_IDENTITY.lstrip("/"))
    if os.path.exists(identity):
        cfg.identity = identity
    hostkey = os.path.join(root, BAKED_HOSTKEY.lstrip("/"))
    if os.path.exists(hostkey):
        with open(hostkey) as f:
            pin = f.read().strip()
        if pin:
            cfg.hostkey = pin


def read_kernel_cmdline(path: str = "/proc/cmdline") -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read the kernel command line from {path}: {e.strerror}") from None


def describe(cfg: CaptureConfig) -> list[str]:
    """The configuration as the operator should see it: URLs (server, identity, hooks) lose
    their passwords and tokens."""
    from .transport.url import redact

    lines = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if v in (None, [], False) and f.name not in ("disks",):
            continue
        if f.name == "disks":
            v = "all" if v is None else ",".join(v)
        elif isinstance(v, list):
            v = ",".join(v)
        elif isinstance(v, str):
            v = redact(v)
        lines.append(f"{f.name}={v}")
    return lines
