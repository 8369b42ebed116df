"""`coldclone headless`: the unattended capture configured on the kernel command line.

The live ISO's coldclone-headless.service runs it when `coldclone.server=` (or
`coldclone.estimate_only`) is on the kernel command line. It is the same core
the CLI and the TUI use, in this order:

    config (kernel command line) -> pre hook -> network (coldclone.ip=)
    -> identity (path or https URL) -> iSCSI login with the source's identity
    -> discovery -> estimate -> capture -> post hook -> iSCSI logout -> on_done

Everything the operator needs is printed plainly, one `coldclone: ` line at a
time, on stdout (the unit tees it to tty1, the serial console and the log).
Machine-readable blocks for fleets and tests (docs/cli.md):

    COLDCLONE-INVENTORY-JSON-BEGIN / ...json... / COLDCLONE-INVENTORY-JSON-END
    COLDCLONE-ESTIMATE-JSON-BEGIN  / ...json... / COLDCLONE-ESTIMATE-JSON-END
    COLDCLONE-HEADLESS-OK capture_id=<id>
    COLDCLONE-HEADLESS-FAILED exit=<code>: <message>

A failure runs the `fail` hook and exits non-zero; the live system then leaves
a root shell with the log (coldclone-rescue.service), never a hung screen.
Test tip: under QEMU a key can be handed over without baking it into the ISO,
`-fw_cfg name=opt/coldclone/identity,file=KEY` with
`coldclone.identity=/sys/firmware/qemu_fw_cfg/by_name/opt/coldclone/identity/raw`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from .config import PREFIX, CaptureConfig, describe, from_cmdline, kernel_words, read_kernel_cmdline
from .errors import (EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ColdcloneError,
                     ConnectionError_, SourceError, UsageError)
from .runcmd import run
from .transport.url import redact, url_secrets

log = logging.getLogger("coldclone.headless")

RUN_DIR = "/run/coldclone"
JSON_LINE_WIDTH = 100   # short lines survive a serial console and a BMC's SOL window


class HookError(ColdcloneError):
    exit_code = EXIT_USAGE


def say(text: str = "") -> None:
    for line in str(text).splitlines() or [""]:
        print(f"coldclone: {line}", flush=True)


def emit_json(tag: str, obj) -> None:
    """A JSON document between marker lines, pretty-printed so no line is long."""
    print(f"COLDCLONE-{tag}-JSON-BEGIN", flush=True)
    print(json.dumps(obj, indent=1, sort_keys=True, default=str), flush=True)
    print(f"COLDCLONE-{tag}-JSON-END", flush=True)


# ---- hooks ----------------------------------------------------------------------------

def fetch(url: str, dest: str, *, what: str, mode: int = 0o600) -> str:
    """Download an http(s) URL to dest (private). Keys only ever come over https."""
    import requests

    shown = redact(url)
    if url.startswith("http://"):
        say(f"WARNING: fetching the {what} over plain http ({shown}); anyone on that network "
            f"could change it. Prefer https://")
    try:
        r = requests.get(url, timeout=30)
        r.raise_for_status()
    except requests.RequestException as e:
        # requests quotes the URL (or its path and query) in its own words
        reason = str(e)
        for secret in url_secrets(url):
            reason = reason.replace(secret, "****")
        raise ConnectionError_(f"could not fetch the {what} from {shown}: {reason}; check the URL, "
                               f"the network (ip=, DHCP) and the web server") from None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(r.content)
    return dest


def run_hook(name: str, spec: str | None, env: dict[str, str]) -> None:
    if not spec:
        return
    path = spec
    if spec.startswith(("http://", "https://")):
        os.makedirs(RUN_DIR, exist_ok=True)
        path = fetch(spec, os.path.join(RUN_DIR, f"hook-{name}"), what=f"{name} hook", mode=0o700)
    elif not os.path.isfile(spec):
        raise HookError(f"{PREFIX}{name}={spec}: no such file on the live system; put the script "
                        f"on the boot medium or serve it over http(s)")
    spec = redact(spec)
    say(f"running the {name} hook {spec}")
    res = run(["/bin/sh", path], check=False, env={**os.environ, **env}, timeout=3600)
    for line in (res.stdout or "").splitlines()[-20:]:
        say(f"  {name}: {line}")
    if res.returncode != 0:
        tail = " | ".join((res.stderr or "").strip().splitlines()[-5:])
        raise HookError(f"the {name} hook {spec} failed (exit {res.returncode})"
                        + (f": {tail}" if tail else "") + f"; fix it or remove {PREFIX}{name}=")


# ---- steps ----------------------------------------------------------------------------

def resolve_identity(cfg: CaptureConfig) -> str | None:
    """Fetch an https identity into a private file; return that file (removed after the run)."""
    if cfg.identity and cfg.identity.startswith("https://"):
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        url = cfg.identity
        cfg.identity = fetch(url, os.path.join(RUN_DIR, f"identity-{os.getpid()}"),
                             what="identity (private key)")
        say(f"identity fetched from {redact(url)}")
        return cfg.identity
    if cfg.identity and not os.path.exists(cfg.identity):
        raise UsageError(f"{PREFIX}identity={cfg.identity}: no such file on the live system; "
                         f"check the path (the boot medium is at /run/live/medium) or use an https:// URL")


def setup_network(cfg: CaptureConfig) -> None:
    if not cfg.ip:
        return
    from . import netsetup

    for line in netsetup.apply(netsetup.parse_ip_spec(cfg.ip)):
        say(line)


def attach_iscsi(cfg: CaptureConfig):
    from .iscsi import auto

    return auto.auto_attach(cfg, None, say)


def take_inventory(cfg: CaptureConfig, *, include_loop: bool, target_path: str | None):
    from .discover.populate import discover

    inv = discover(include_loop=include_loop, target=target_path, only=cfg.disks)
    unknown = [w for w in inv.warnings if w.startswith("selected disk ")]
    if unknown:
        raise UsageError(f"{PREFIX}disks=: " + "; ".join(unknown) + " (see the inventory above; "
                         "names such as sda, md127, cciss/c0d0 or /dev paths)")
    for spec in cfg.exclude:
        name = spec[len("/dev/"):] if spec.startswith("/dev/") else spec
        disk = inv.disk(name)
        if disk is None:
            raise UsageError(f"{PREFIX}exclude={spec}: no such disk (see the inventory above)")
        disk.exclude(f"excluded by {PREFIX}exclude=")
    return inv


def print_inventory(inv) -> None:
    from .discover.model import to_dict
    from .discover.render import render

    for line in render(inv).splitlines():
        say(line)
    emit_json("INVENTORY", to_dict(inv))


def inspect_source(inv):
    """The readiness report (read-only mounts of the source OS), said in a few lines; advice
    like the estimate, so a failure to inspect never stops the capture."""
    from .inspect.report import inspect_for_capture

    report = inspect_for_capture(inv)
    for line in report.summary():
        say(line)
    return report


def make_estimate(cfg: CaptureConfig, inv, paths: list[str], target):
    from .estimate import plan

    try:
        est = plan.estimate_capture(inv, paths, cfg.server, cfg.mode,
                                    calibrate_seconds=cfg.calibrate,
                                    connect=target.connect if target else None,
                                    local_path=target.local_path if target else None)
    except ColdcloneError:
        raise
    except Exception as e:  # an estimate is advice: a bug in it must not stop a capture
        log.exception("estimate failed")
        say(f"estimate unavailable ({e!r}); capturing anyway")
        return None
    for line in est.lines():
        say(line)
    emit_json("ESTIMATE", est.to_dict())
    return est


def do_capture(cfg: CaptureConfig, inv, paths: list[str], target, est, cancel: threading.Event,
               readiness=None):
    from .capture.session import run_capture
    from .capture.stream import StreamOptions, parse_compress
    from .discover.model import to_dict

    codec, level = parse_compress(cfg.compress)
    opts = StreamOptions(mode=cfg.mode, codec=codec, level=level)
    from .estimate.progress import ProgressPrinter

    printer = ProgressPrinter(cfg.progress, estimate=est, prefix="coldclone: ")
    with printer.ticking():   # lines keep coming while the server verifies and converts
        return run_capture(paths, target.connect, opts, capture_id=cfg.capture_id,
                           image_format=cfg.format, on_event=printer, cancel=cancel,
                           source_facts={"inventory": to_dict(inv)},
                           estimate=est.to_dict() if est is not None else None,
                           readiness=readiness)


# --live: the command that carries out on_done, one argument per line. The live image's
# headless-run runs it only after every line of ours has reached the consoles; run from
# here, a power-off would stop the unit (and its console copy) before the last lines.
ON_DONE_FILE = os.path.join(RUN_DIR, "on-done")


def on_done_command(action: str, cmdline: str) -> list[str]:
    if action in ("poweroff", "reboot"):
        return ["systemctl", "--no-block", action]
    return ["systemctl", "--no-block", "start",
            *[f"coldclone-shell@{t}.service" for t in operator_ttys(cmdline)]]


def apply_on_done(action: str, live: bool, cmdline: str, path: str = ON_DONE_FILE) -> None:
    say(f"on_done={action}")
    if action == "shell":
        say("leaving a root shell on the consoles (log: /var/log/coldclone/headless.log)")
    if not live:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(on_done_command(action, cmdline)) + "\n")


def operator_ttys(cmdline: str) -> list[str]:
    """tty1 and every serial console named by console= (as the live scripts' cc_ttys)."""
    ttys = ["tty1"]
    for word in kernel_words(cmdline):
        if word.startswith("console="):
            dev = word[len("console="):].split(",")[0]
            if dev.startswith(("ttyS", "ttyAMA", "hvc")) and dev not in ttys:
                ttys.append(dev)
    return ttys


# ---- the run --------------------------------------------------------------------------

def headless(cfg: CaptureConfig, *, include_loop: bool = False, cancel: threading.Event | None = None):
    """The whole unattended run; returns the CaptureResult (None for estimate_only)."""
    from .transport.open import open_target

    cancel = cancel or threading.Event()
    say("configuration: " + " ".join(describe(cfg)))
    env = {"COLDCLONE_SERVER": cfg.server or "", "COLDCLONE_CAPTURE_ID": cfg.capture_id or ""}
    run_hook("pre", cfg.pre, {**env, "COLDCLONE_PHASE": "pre"})
    setup_network(cfg)
    fetched_identity = resolve_identity(cfg)
    target = None
    attachment = None
    try:
        if cfg.server:
            target = open_target(cfg.server, identity=cfg.identity, hostkey=cfg.hostkey,
                                 known_hosts=cfg.known_hosts, timeout=cfg.timeout)
        if cfg.server and cfg.server.startswith("ssh://") and not (cfg.hostkey or cfg.known_hosts):
            # said before the first connection (the calibration probe): the refusal would be
            # right but late
            say("no host key pin given: the server's key must be in known_hosts, or the "
                "capture is refused; give coldclone.hostkey=SHA256:...")
        attachment = attach_iscsi(cfg)
        # A local target disk must never be offered as a source; an NFS mount is no disk.
        local_disk = target.local_path if target and target.url.scheme == "file" else None
        inv = take_inventory(cfg, include_loop=include_loop, target_path=local_disk)
        print_inventory(inv)
        disks = inv.capture_set()
        if not disks:
            raise SourceError("no disk to capture: discovery found none that may be captured "
                              f"(see the inventory above; check {PREFIX}disks= / {PREFIX}exclude=, "
                              f"the RAID controller's logical drives, and iSCSI)")
        paths = [d.dev_path or "/dev/" + d.name for d in disks]
        say("will capture: " + ", ".join(paths))
        readiness = inspect_source(inv)
        est = make_estimate(cfg, inv, paths, target)
        if cfg.estimate_only:
            say(f"{PREFIX}estimate_only: nothing captured")
            return None
        result = do_capture(cfg, inv, paths, target, est, cancel, readiness=readiness)
        import io

        from .estimate.progress import print_summary

        summary = io.StringIO()
        print_summary(result, out=summary, estimate=est)
        say(summary.getvalue())
        # the last word before on_done: what the cloud image will need (the manifest has it all)
        for line in readiness.summary():
            say(line)
        from .publish.manifest import PublishRecord

        pub = PublishRecord.from_manifest(result.manifest)
        if pub is not None:
            say(f"published to Glance ({pub.cloud}): image {pub.image_id}")
        run_hook("post", cfg.post, {**env, "COLDCLONE_PHASE": "post",
                                    "COLDCLONE_CAPTURE_ID": result.capture_id,
                                    "COLDCLONE_LOCATION": result.location})
        return result
    finally:
        if attachment is not None:
            try:
                attachment.logout()
            except ColdcloneError as e:
                say(f"iSCSI logout: {e}")
        if target is not None:
            target.close()
        if fetched_identity:
            os.unlink(fetched_identity)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldclone headless",
                                description="Unattended capture configured by coldclone.* keys on "
                                            "the kernel command line (docs/cli.md).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cmdline-file", default="/proc/cmdline", metavar="FILE",
                     help="read the keys from this file (default /proc/cmdline)")
    src.add_argument("--cmdline", metavar="TEXT", help="read the keys from this text")
    p.add_argument("--live", action="store_true",
                   help="running on the live ISO: apply on_done (power off, reboot, shell)")
    p.add_argument("--include-loop", action="store_true", help="offer loop devices (tests)")
    p.add_argument("--baked-root", default="/", help=argparse.SUPPRESS)
    return p


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    cfg = None
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: cancel.set())  # systemctl stop: ABORT cleanly
    t0 = time.monotonic()
    try:
        text = args.cmdline if args.cmdline is not None else read_kernel_cmdline(args.cmdline_file)
        cfg = from_cmdline(text, baked_root=args.baked_root).check()
        if cfg.debug:
            logging.getLogger().setLevel(logging.DEBUG)
        result = headless(cfg, include_loop=args.include_loop, cancel=cancel)
        print(f"COLDCLONE-HEADLESS-OK capture_id={result.capture_id if result else '-'} "
              f"seconds={time.monotonic() - t0:.1f}", flush=True)
        apply_on_done(cfg.on_done, args.live, text)
        return EXIT_OK
    except (ColdcloneError, KeyboardInterrupt, Exception) as e:
        if isinstance(e, ColdcloneError):
            code, msg = e.exit_code, str(e)
        elif isinstance(e, KeyboardInterrupt):
            code, msg = EXIT_CANCELLED, "cancelled"
        elif isinstance(e, OSError):
            # str() keeps the path ("[Errno 13] Permission denied: '/run/coldclone/locks'")
            log.exception("system error")
            code, msg = EXIT_INTERNAL, f"{e} (the log has the details)"
        else:
            log.exception("internal error")
            code, msg = EXIT_INTERNAL, f"internal error: {e!r} (the log has the traceback; please report it)"
        say(f"error: {msg}")
        if cfg is not None and cfg.fail:
            try:
                run_hook("fail", cfg.fail, {"COLDCLONE_PHASE": "fail", "COLDCLONE_EXIT": str(code),
                                            "COLDCLONE_MESSAGE": msg[:2000]})
            except ColdcloneError as he:
                say(f"error: {he}")
        print(f"COLDCLONE-HEADLESS-FAILED exit={code}: {msg.splitlines()[0] if msg else ''}", flush=True)
        return code
