"""One capture configuration, whichever front end fills it.

The headless runner reads it from the kernel command line (`coldclone.KEY=VALUE`
words), `coldclone capture` from flags, the TUI from its forms. Each key is
checked here, once: a typo or a bad value is a UsageError that names the key,
what was wrong and what is accepted (docs/cli.md holds the table). Nothing the
operator typed is ever replaced by a silent default.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Callable

from ..bwlimit import human_rate, parse_rate
from .capture.stream import parse_compress
from ..choices import CAPTURE_MODES, ImageFormat, IscsiMode, Mode, OnDone, OnReadError, words
from ..errors import UsageError
from .netsetup import parse_ip_spec
from .transport.ssh import normalize_pin
from .transport.url import parse_target, redact

PREFIX = "coldclone."
# Defaults a build can bake into the ISO (make iso IDENTITY=... HOSTKEY=...).
BAKED_IDENTITY = "/etc/coldclone/identity"
BAKED_HOSTKEY = "/etc/coldclone/hostkey"


# --- value parsers: (name as the operator typed it, value) -> value, or a UsageError naming it.
# `name` is `coldclone.KEY` on the kernel command line and `--flag` on the CLI, so one parser
# gives both front ends the same message.

def _word_list(name: str, value: str) -> list[str]:
    items = [v.strip() for v in value.split(",")]
    if not value or any(not v for v in items):
        raise UsageError(f"{name}={value!r}: write a comma-separated list such as sda,sdb")
    for v in items:
        if not re.fullmatch(r"[A-Za-z0-9_./:!-]+", v):
            raise UsageError(f"{name}: {v!r} is not a disk name (e.g. sda, md127, cciss/c0d0, /dev/sdb)")
    return items


def _disks(name: str, value: str) -> list[str] | None:
    return None if value == "all" else _word_list(name, value)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        more = f" (did you mean {hint[0]}?)" if hint else ""
        raise UsageError(f"{name}={value!r} is not valid{more}: use {' or '.join(choices)}")
    return value


def _enum(enum: type[StrEnum]):
    return lambda name, value: enum(_choice(name, value, words(enum)))


def _seconds(lo: float, hi: float):
    def parse(name: str, value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"{name}={value!r}: write a number of seconds ({lo:g}-{hi:g})") from None
        if not lo <= v <= hi:
            raise UsageError(f"{name}={value!r}: must be between {lo:g} and {hi:g} seconds")
        return v
    return parse


def _count(lo: int, hi: int):
    def parse(name: str, value: str) -> int:
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise UsageError(f"{name}={value!r}: write a whole number from {lo} to {hi}")
        return int(value)
    return parse


def _flag(name: str, value: str | None) -> bool:
    if value is None or value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise UsageError(f"{name}={value!r}: write {name} alone, or =1 / =0")


def _text(name: str, value: str) -> str:
    return value


def _server(name: str, value: str) -> str:
    parse_target(value)  # raises a UsageError naming what is wrong with it
    return value


def _mode(name: str, value: str) -> Mode:
    if value == Mode.USED and Mode.USED not in CAPTURE_MODES:
        raise UsageError(f"{name}=used (filesystem used blocks only) is not available in "
                         f"this version; use mode=nonzero (skips all-zero blocks, the default) or mode=full")
    return Mode(_choice(name, value, tuple(CAPTURE_MODES)))


def _hostkey(name: str, value: str) -> str:
    pin = normalize_pin(value)
    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", pin):
        raise UsageError(f"{name}={value!r} is not a SHA256 fingerprint: copy it from "
                         f"`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the conversion "
                         f"server (SHA256: and 43 characters)")
    return pin


def _compress(name: str, value: str) -> str:
    parse_compress(value)
    return value


def _iscsi_ip(name: str, value: str) -> str:
    if value in ("original", "dhcp"):
        return value
    try:
        if "/" in value and ipaddress.IPv4Interface(value).network.prefixlen < 32:
            return value
    except ValueError:
        pass
    raise UsageError(f"{name}={value!r}: use original (the source server's own address), "
                     f"dhcp, or ADDRESS/PREFIX such as 192.168.10.21/24")


def _ip(name: str, value: str) -> str:
    # checked now, with every other key, not after the pre hook has run
    parse_ip_spec(value, what=f"{name}=")
    return value


def _hook(name: str, value: str) -> str:
    if value.startswith(("/", "http://", "https://")):
        return value
    hook = name.rpartition(".")[2].lstrip("-")
    raise UsageError(f"{name}={value!r}: a hook is an absolute path on the live system "
                     f"(e.g. /run/live/medium/hooks/{hook}.sh) or an http(s):// URL")


def _identity(name: str, value: str) -> str:
    if value.startswith("https://") or value.startswith("/"):
        return value
    if value.startswith("http://"):
        raise UsageError(f"{name}={value!r}: a private key is only fetched over https://, "
                         f"never plain http (anyone on the wire could copy it)")
    raise UsageError(f"{name}={value!r}: give an absolute path on the live medium "
                     f"(e.g. /run/live/medium/coldclone/id_ed25519) or an https:// URL")


def _capture_id(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value) or ".." in value:
        raise UsageError(f"{name}={value!r}: letters, digits, '.', '_' and '-' only "
                         f"(at most 128, starting with a letter or digit)")
    return value


def _wave(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise UsageError(f"{name}={value!r}: a wave is named with letters, digits, '.', '_' and '-' "
                         f"(at most 64, starting with a letter or digit), e.g. wave-3 or 2025-06-14")
    return value


def _rate(name: str, value: str) -> int:
    return parse_rate(value, name)


def _resume(name: str, value: str) -> str:
    if value in ("auto", "off"):
        return value
    try:
        return _capture_id(name, value)
    except UsageError:
        raise UsageError(f"{name}={value!r}: write auto (continue an unfinished capture of the same id), "
                         f"off (refuse an existing id), or the id of the capture to resume") from None


SIZE_RE = re.compile(r"^(\d+)([KMG]i?B?)?$", re.I)


def parse_size(text: str, name: str = "size") -> int:
    m = SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"{name} {text!r}: write a number with an optional K, M or G suffix (e.g. 4M)")
    n = int(m.group(1))
    unit = (m.group(2) or "").upper()[:1]
    return n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


def _size(name: str, value: str) -> int:
    return parse_size(value, name)


# --- the declaration: every option once. The kernel command line parser, the CLI flags
# (add_flags), the TUI's defaults (CaptureConfig()) and the key table in docs/cli.md
# (markdown_table, checked by tests/unit/test_config.py) all come from here.

@dataclass(frozen=True)
class Option:
    key: str                          # the CaptureConfig field, and coldclone.KEY
    parse: Callable[[str, str], Any] | None   # None: a flag (alone, =1 or =0)
    value: str                        # docs: what the value is
    default: str                      # docs: the default as the operator sees it
    flag: str | None = None           # the CLI flag (`coldclone capture`, `coldclone estimate`)
    metavar: str | None = None
    kernel: bool = True               # a coldclone.* kernel key (False: CLI only)
    help: str = ""                    # the CLI's help line (default: `value`)
    # A list: comma-separated on the kernel command line, the flag repeated (or comma-separated)
    # on the CLI; `parse` reads one item.
    many: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("server", _server, "`ssh://user@host[:port]/path`, `file:///path`, `nfs://host/export/path`; "
           "several `ssh://` servers comma-separated (a wave): the agent asks each for its free space and "
           "running captures, takes the least busy one (an unfinished capture of these disks first) and "
           "moves to the next when one is down or full (docs/wave.md)",
           "required (unless `estimate_only`)", flag="--to", metavar="URL", many=True,
           help="where the images go: ssh://user@host[:port]/path, file:///path or nfs://host/export/path; "
                "repeat --to for several conversion servers (ssh:// only)"),
    Option("identity", _identity, "private key: an absolute path on the live system (the boot medium is "
           "`/run/live/medium`) or an `https://` URL (never plain http)",
           "`/etc/coldclone/identity` if baked in with `make iso IDENTITY=...`", flag="--identity",
           metavar="KEY", help="private key for the conversion server (a path or an https:// URL)"),
    Option("hostkey", _hostkey, "`SHA256:...` (43 characters) pin of the conversion server's host key; "
           "with several servers, their pins comma-separated (each server must present one of them)",
           "`/etc/coldclone/hostkey` if baked in with `make iso HOSTKEY=...`; without a pin or known_hosts "
           "entry the capture is refused", flag="--hostkey", metavar="SHA256:...", many=True,
           help="pin the server's host key fingerprint (repeat, or comma-separate, for several servers)"),
    Option("known_hosts", _text, "a known_hosts file on the live system", "-", flag="--known-hosts",
           metavar="FILE", help="known_hosts file (default ~/.ssh/known_hosts)"),
    Option("disks", _disks, "`all` or `sda,md127,cciss/c0d0,/dev/sdb` (an md array stands for its member "
           "disks); an unknown name is an error", "`all` (what discovery offers)"),
    Option("exclude", _word_list, "disks to leave out, same syntax", "-"),
    Option("mode", _mode, "`used` (only the blocks the filesystems use, from partclone's maps: "
           "docs/capture-used.md), `nonzero` (skip all-zero blocks) or `full` (every byte)",
           "`nonzero`", flag="--mode", metavar="MODE",
           help="used: only the blocks the filesystems use; nonzero: skip all-zero blocks (default); "
                "full: send every byte"),
    Option("compress", _compress, "`zstd`, `zstd:LEVEL` (1-19), `zstd:auto` (level 1, raised to 3 or 4 "
           "while the link is the limit and the machine has idle CPU, lowered as soon as compression "
           "is the limit), `none`", "`zstd:auto`", flag="--compress",
           metavar="zstd[:N|:auto]|none", help="compression of DATA records (default zstd:auto: level 1, "
                                               "raised while the link is the limit and the CPU has room)"),
    Option("on_read_error", _enum(OnReadError), "`map` (sectors the disk cannot read become zeros in the "
           "image, every range is listed in the manifest, the capture ends \"verified with N unreadable "
           "sectors\", exit 7) or `fail` (stop at the first one, naming the device and the sector, exit 4). "
           "`map` is the default, headless too: a failing disk tends to get worse with every pass, so one "
           "pass that keeps all that still reads beats an aborted one, and exit 7 and the manifest never "
           "let the result pass for a clean copy", "`map`", flag="--on-read-error", metavar="map|fail",
           help="unreadable source sectors: map (zero-fill, list them in the manifest, exit 7) or fail "
                "(stop at the first, exit 4). Default map: a failing disk gets worse with every pass, "
                "so one pass keeps all that still reads"),
    Option("format", _enum(ImageFormat), "`qcow2` or `raw`", "`qcow2`", flag="--format",
           metavar="qcow2|raw", help="image format on the server"),
    Option("capture_id", _capture_id, "name of the capture directory", "`<hostname>-<date>-<random>`",
           flag="--capture-id", metavar="ID", help="name of the capture directory (default host-date-random)"),
    Option("resume", _resume, "`auto` (an unfinished capture of the same id that the server holds is "
           "continued: the source is checked against what it holds, only the rest is sent; a dropped "
           "session is reconnected; with no id given, an unfinished capture of these same disks, "
           "proven by WWID or serial, is found and continued, so a source rebooted mid-capture "
           "finishes), `off` (an existing id is refused, a drop fails the capture), or "
           "`ID` (resume that capture: also its capture id)", "`auto`", flag="--resume", metavar="ID|auto|off",
           help="resume the unfinished capture ID (auto: the same id, or these disks' unfinished "
                "capture proven by WWID/serial; off: never)"),
    Option("reconnect", _seconds(0, 86400), "seconds to keep reconnecting after the session to the "
           "server drops (backoff 1 s to 30 s; `0`: fail at once); needs resume", "`600`",
           flag="--reconnect", metavar="SECONDS", help="keep reconnecting for this long after a drop (0: never)"),
    Option("failover", _seconds(0, 86400), "with several servers: seconds the server of a running "
           "capture may stay unreachable before the capture moves to the next server (and starts there "
           "anew; what the first one holds stays there); a server that refuses for lack of space is left "
           "at once", "`60`", flag="--failover", metavar="SECONDS",
           help="with several --to: move to the next server after this long unreachable"),
    Option("wave", _wave, "a label for the capture (letters, digits, `.`, `_`, `-`): the migration wave "
           "it belongs to, in the manifest and on `coldclone-server status` and its page", "-",
           flag="--wave", metavar="NAME", help="label the capture with its migration wave"),
    Option("bwlimit", _rate, "cap this agent's rate to the server: `100mbit`, `1gbit` (bits per second), "
           "`50M` (MB/s) or `40MiB`; the estimate counts with it", "no cap", flag="--bwlimit",
           metavar="RATE", help="cap the rate to the server: 100mbit, 1gbit, 50M (MB/s), 40MiB"),
    Option("stall", _seconds(5, 3600), "seconds sent data may stay unacknowledged by the server's TCP "
           "before the link is taken for dead (TCP_USER_TIMEOUT; then reconnected, with resume)", "`120`",
           flag="--stall-timeout", metavar="SECONDS",
           help="take the link for dead when sent data stays unacknowledged this long"),
    Option("iscsi", _enum(IscsiMode), "`auto` (log in with the source OS's own initiator name and CHAP) "
           "or `off`", "`auto`"),
    Option("iscsi_ip", _iscsi_ip, "`original` (add the source's own address), `dhcp`, or `ADDRESS/PREFIX`",
           "`original`"),
    Option("ip", _ip, "the live system's network when DHCP is not there: `dhcp` or "
           "`[IFACE:]ADDRESS/PREFIX[,gw=GW][,dns=DNS]` (plain `ip=`, live-boot's syntax, also works)",
           "DHCP on every NIC"),
    Option("on_done", _enum(OnDone), "`poweroff`, `reboot`, `shell`", "`poweroff`"),
    Option("pre", _hook, "hook run with `/bin/sh` before anything else (a failure stops the run): an "
           "absolute path or an http(s) URL (plain http is allowed with a warning); environment "
           "`COLDCLONE_PHASE`, `COLDCLONE_SERVER`, `COLDCLONE_CAPTURE_ID`", "-"),
    Option("post", _hook, "hook run after a verified capture, as `pre`; also `COLDCLONE_LOCATION`", "-"),
    Option("fail", _hook, "hook run after any failure, as `pre`; also `COLDCLONE_EXIT` and "
           "`COLDCLONE_MESSAGE`", "-"),
    Option("estimate_only", None, "flag: discover and estimate, capture nothing", "off"),
    Option("allow_mounted", None, "flag: capture even a source that is mounted read-write or open for "
           "writing (refused otherwise, naming the mount or the process); the image may be "
           "inconsistent and the manifest records the override", "off", flag="--allow-mounted-source",
           help="capture even if a source is mounted read-write or open for writing "
                "(the image may be inconsistent; the manifest records it)"),
    Option("calibrate", _seconds(0, 120), "seconds of calibration probe before the estimate, `0` skips it",
           "`3`", flag="--calibrate", metavar="SECONDS",
           help="time spent measuring the source and the target (0: table rates only)"),
    Option("progress", _seconds(0.1, 3600), "seconds between progress lines", "`10`",
           flag="--progress-interval", metavar="SECONDS"),
    Option("timeout", _seconds(1, 600), "connect timeout, seconds", "`20`", flag="--timeout",
           metavar="SECONDS", help="connect timeout in seconds"),
    Option("debug", None, "flag: log every command", "off"),
    # Tuning of the capture pipeline: CLI only (the defaults are measured, see make bench).
    Option("chunk_size", _size, "read size", "`4M`", flag="--chunk-size", metavar="SIZE", kernel=False),
    Option("block_size", _size, "zero-skip and digest granularity", "`64K`", flag="--block-size",
           metavar="SIZE", kernel=False),
    Option("workers", _count(1, 64), "hashing/compression threads", "`2`", flag="--workers", metavar="N",
           kernel=False),
    Option("password_env", _text, "an environment variable holding an SSH password (discouraged: use "
           "a key)", "-", flag="--password-env", metavar="VAR", kernel=False,
           help="read an SSH password from this variable (discouraged)"),
)
OPTION = {o.key: o for o in OPTIONS}
KERNEL_KEYS = tuple(o.key for o in OPTIONS if o.kernel)
# Read by the live system's own scripts, not by the agent; known so they are not typos.
LIVE_KEYS = ("smoke", "smoke_done", "tui")
ALL_KEYS = KERNEL_KEYS


@dataclass
class CaptureConfig:
    """One capture's configuration, whichever front end filled it (fields: OPTIONS)."""
    server: list[str] = field(default_factory=list)      # in the operator's order; several: ssh:// only
    identity: str | None = None
    hostkey: list[str] = field(default_factory=list)     # pins (SHA256:...); any one may match
    known_hosts: str | None = None
    disks: list[str] | None = None     # None: every disk discovery offers
    exclude: list[str] = field(default_factory=list)
    mode: Mode = Mode.NONZERO
    compress: str = "zstd:auto"
    on_read_error: OnReadError = OnReadError.MAP
    format: ImageFormat = ImageFormat.QCOW2
    capture_id: str | None = None
    resume: str = "auto"
    reconnect: float = 600.0
    failover: float = 60.0
    wave: str | None = None
    bwlimit: int | None = None          # bytes per second
    stall: float = 120.0
    iscsi: IscsiMode = IscsiMode.AUTO
    iscsi_ip: str = "original"
    ip: str | None = None
    on_done: OnDone = OnDone.POWEROFF
    pre: str | None = None
    post: str | None = None
    fail: str | None = None
    estimate_only: bool = False
    allow_mounted: bool = False
    calibrate: float = 3.0
    progress: float = 10.0
    timeout: float = 20.0
    debug: bool = False
    chunk_size: int = 4 << 20
    block_size: int = 64 << 10
    workers: int = 2
    password_env: str | None = None

    def __post_init__(self) -> None:
        # a URL given where a list of them goes would be read letter by letter
        for name in ("server", "hostkey"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"CaptureConfig.{name} is a list (several: a wave's servers), not a str")

    def resolved_capture_id(self) -> str | None:
        """The capture's id: `resume=ID` names it too (None: a new one is made up)."""
        if self.resume in ("auto", "off"):
            return self.capture_id
        if self.capture_id not in (None, self.resume):
            raise UsageError(f"{PREFIX}resume={self.resume} and {PREFIX}capture_id={self.capture_id} "
                             f"name two captures: give one of them")
        return self.resume

    def check(self) -> "CaptureConfig":
        """Cross-key checks, once every key is in."""
        if not self.server and not self.estimate_only:
            raise UsageError(f"{PREFIX}server= is missing: say where the images go, "
                             f"e.g. {PREFIX}server=ssh://coldclone@10.0.0.5/srv/coldclone")
        urls = [parse_target(s) for s in self.server]
        if len(urls) > 1:
            other = [redact(s) for s, u in zip(self.server, urls) if u.scheme != "ssh"]
            if other:
                raise UsageError(f"{PREFIX}server=: several servers must all be ssh:// conversion servers "
                                 f"({', '.join(other)} is not); a file or NFS target is one place")
            if len({str(u) for u in urls}) != len(urls):
                raise UsageError(f"{PREFIX}server=: a server is named twice: {', '.join(map(redact, self.server))}")
        for text, url in zip(self.server, urls):
            if url.scheme == "ssh" and not self.identity:
                raise UsageError(f"{PREFIX}server={redact(text)} needs a key: give {PREFIX}identity= "
                                 f"(a path on the live medium or an https:// URL) or build the ISO "
                                 f"with make iso IDENTITY=...")
        self.resolved_capture_id()
        if self.disks is not None and not self.disks:
            raise UsageError(f"{PREFIX}disks= is empty: write all, or a list such as sda,md127")
        return self


def markdown_table() -> str:
    """The kernel command line keys as docs/cli.md shows them (a test keeps the two equal)."""
    rows = ["| key | value | default |", "|---|---|---|"]
    rows += [f"| `{o.key}` | {o.value} | {o.default} |" for o in OPTIONS if o.kernel]
    return "\n".join(rows)


def add_flags(parser: argparse.ArgumentParser, keys: tuple[str, ...], *, required: tuple[str, ...] = ()) -> None:
    """Declare the CLI flags of these options on an argparse parser, from OPTIONS: the same
    parser, default and help as the kernel key. Flags stay unset (None) unless typed, so
    config_from_args keeps the declaration's default."""
    for key in keys:
        o = OPTION[key]
        if o.parse is None:
            parser.add_argument(o.flag, dest=key, action="store_true", default=None, help=o.help or o.value)
            continue

        def typed(value: str, o=o):
            try:
                return [o.parse(o.flag, v) for v in _items(o.flag, value)] if o.many else o.parse(o.flag, value)
            except UsageError as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        typed.__name__ = key    # argparse names the type in its message
        parser.add_argument(o.flag, dest=key, type=typed, default=None, metavar=o.metavar,
                            action="append" if o.many else "store",
                            required=key in required, help=(o.help or o.value).replace("%", "%%"))


def _items(name: str, value: str) -> list[str]:
    """The items of a list option's value (comma-separated), none of them empty."""
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise UsageError(f"{name}={value!r}: an empty item in the comma-separated list")
    return items


def config_from_args(args: argparse.Namespace, **extra) -> CaptureConfig:
    """A CaptureConfig from the flags add_flags declared (and extra fields a front end sets)."""
    cfg = CaptureConfig()
    for o in OPTIONS:
        v = getattr(args, o.key, None)
        if v is not None:
            # a repeated list flag: one list of every item, in the order typed
            setattr(cfg, o.key, [x for part in v for x in part] if o.many else v)
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cfg


def _unknown(key: str) -> UsageError:
    hint = difflib.get_close_matches(key, ALL_KEYS + LIVE_KEYS, n=1, cutoff=0.6)
    more = f"; did you mean {PREFIX}{hint[0]}?" if hint else ""
    return UsageError(f"unknown kernel command line key {PREFIX}{key}{more} "
                      f"(known: {', '.join(ALL_KEYS)})")


# The bytes the kernel's isspace() takes for a word break (lib/ctype.c: the ASCII blanks and
# Latin-1's no-break space, 0xa0).
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")


def kernel_words(text: str) -> list[tuple[str, str | None]]:
    """The kernel command line as the kernel reads it: (parameter, value or None) per word.

    The kernel's own rules (lib/cmdline.c next_arg, kernel/params.c parse_args), not a shell's:
    a double quote toggles quoting anywhere in a word, so `coldclone.pre="a b"` is one word;
    only a quote opening the word or its value is removed (with its closing quote when that
    ends the word); an apostrophe or a backslash is an ordinary character; `--` ends the
    parameters: what follows is for init, never ours. Split on bytes, as the kernel does, so a
    value holding odd bytes keeps them (surrogateescape) for its parser to name.

    A quote never closed runs to the end of the line, as in the kernel; when that swallows a
    coldclone.* word it is refused, since those keys would then reach nobody as typed."""
    # next_arg() step by step, on a copy it may cut with NULs as the C code does.
    buf = bytearray(text.encode("utf-8", "surrogateescape").split(b"\0", 1)[0] + b"\0")
    out: list[tuple[str, str | None]] = []

    def cstr(at: int) -> str:
        return bytes(buf[at:buf.index(0, at)]).decode("utf-8", "surrogateescape")

    pos = 0
    while True:
        while buf[pos] in _KERNEL_SPACE:
            pos += 1
        if buf[pos] == 0:
            return out
        opened = pos
        in_quote = quoted = buf[pos] == 0x22
        if quoted:
            pos += 1
        args, i, equals = pos, 0, 0
        while buf[args + i] != 0:
            c = buf[args + i]
            if c in _KERNEL_SPACE and not in_quote:
                break
            if equals == 0 and c == 0x3D:
                equals = i        # as in C: an '=' at index 0 counts as none found
            if c == 0x22:
                in_quote = not in_quote
            i += 1
        end = args + i
        if in_quote and PREFIX.encode() in buf[opened:end]:
            shown = bytes(buf[opened:end]).decode("utf-8", "surrogateescape")
            raise UsageError(f"kernel command line: an unbalanced quote: the double quote in {shown[:60]!r} is never "
                             f"closed, so the kernel reads the rest of the line as one value; close it")
        value_at = None
        if equals:
            buf[args + equals] = 0
            value_at = args + equals + 1
            if buf[value_at] == 0x22:        # the value's quotes are not part of it
                value_at += 1
                if buf[end - 1] == 0x22:
                    buf[end - 1] = 0
        if quoted and i > 0 and buf[end - 1] == 0x22:
            buf[end - 1] = 0
        next_pos = end + 1 if buf[end] != 0 else end
        buf[end] = 0
        name, value = cstr(args), None if value_at is None else cstr(value_at)
        if value is None and name == "--":
            return out                      # the rest is init's
        out.append((name, value))
        pos = next_pos


def cmdline_words(text: str) -> list[tuple[str, str | None]]:
    """The coldclone.* words of a kernel command line, as (key without the prefix, value or None)."""
    return [(name[len(PREFIX):], value) for name, value in kernel_words(text) if name.startswith(PREFIX)]


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
            o = OPTION.get(key)
            if o is None or not o.kernel:
                raise _unknown(key)
            name = f"{PREFIX}{key}"
            if o.parse is None:
                setattr(cfg, key, _flag(name, value))
            else:
                if value is None or value == "":
                    raise UsageError(f"{name} needs a value: write {name}=...")
                setattr(cfg, key, [o.parse(name, v) for v in _items(name, value)] if o.many
                        else o.parse(name, value))
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
            # one pin, or several (a wave's servers): comma- or line-separated
            pins = ",".join(f.read().split())
        if pins:
            cfg.hostkey = [_hostkey(BAKED_HOSTKEY, p) for p in _items(BAKED_HOSTKEY, pins)]


def read_kernel_cmdline(path: str = "/proc/cmdline") -> str:
    try:
        with open(path, "rb") as f:
            # bytes the kernel took as they came: kept (surrogateescape) for kernel_words to split
            # as the kernel did and for a parser to name, never a UnicodeDecodeError
            return f.read().decode("utf-8", "surrogateescape")
    except OSError as e:
        raise UsageError(f"cannot read the kernel command line from {path}: {e.strerror}") from None


def describe(cfg: CaptureConfig) -> list[str]:
    """The configuration as the operator should see it: URLs (server, identity, hooks) lose
    their passwords and tokens."""
    lines = []
    for f in fields(cfg):
        if not OPTION[f.name].kernel:
            continue
        v = getattr(cfg, f.name)
        if v in (None, [], False) and f.name not in ("disks",):
            continue
        if f.name == "disks":
            v = "all" if v is None else ",".join(v)
        elif f.name == "bwlimit":
            v = human_rate(v)
        elif isinstance(v, list):
            v = ",".join(redact(x) for x in v)
        elif isinstance(v, str):
            v = redact(v)
        lines.append(f"{f.name}={v}")
    return lines


if __name__ == "__main__":     # python -m agent.source.config --markdown: the table for docs/cli.md
    print(markdown_table())
