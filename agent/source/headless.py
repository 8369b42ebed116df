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
import logging
import os
import sys
import threading
import time


from .config import CaptureConfig, from_cmdline, kernel_words, read_kernel_cmdline
from .capture.stop import StopOnSignal
from ..errors import EXIT_OK, EXIT_USAGE, CancelledError
from .console import JobConsole
from .job import CaptureJob, describe_failure

log = logging.getLogger("coldclone.headless")

RUN_DIR = "/run/coldclone"


def say(text: str = "") -> None:
    for line in str(text).splitlines() or [""]:
        print(f"coldclone: {line}", flush=True)


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
    for name, value in kernel_words(cmdline):
        if name == "console" and value:
            dev = value.split(",")[0]
            if dev.startswith(("ttyS", "ttyAMA", "hvc")) and dev not in ttys:
                ttys.append(dev)
    return ttys


# ---- the run --------------------------------------------------------------------------

def headless(cfg: CaptureConfig, *, include_loop: bool = False, cancel: threading.Event | None = None):
    """The whole unattended run; returns the CaptureResult (None for estimate_only)."""
    console = JobConsole(cfg.progress, prefix="coldclone: ", machine_readable=True)
    job = CaptureJob(cfg, notify=console, cancel=cancel or threading.Event(), include_loop=include_loop)
    try:
        return job.run()
    finally:
        console.close()


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
    cancel = threading.Event()
    # systemctl stop (SIGTERM), Ctrl-C, a console hang-up: ABORT cleanly, release the guard
    with StopOnSignal(cancel) as stop:
        return _run(args, cancel, stop)


def _run(args, cancel: threading.Event, stop: StopOnSignal) -> int:
    t0 = time.monotonic()
    try:
        text = args.cmdline if args.cmdline is not None else read_kernel_cmdline(args.cmdline_file)
        cfg = from_cmdline(text, baked_root=args.baked_root).check()
        if cfg.debug:
            logging.getLogger().setLevel(logging.DEBUG)
        result = headless(cfg, include_loop=args.include_loop, cancel=cancel)
        code = result.exit_code if result else EXIT_OK
        if code == EXIT_OK:
            print(f"COLDCLONE-HEADLESS-OK capture_id={result.capture_id if result else '-'} "
                  f"seconds={time.monotonic() - t0:.1f}", flush=True)
        else:   # verified, but with sectors mapped as zeros: its own marker, never the OK one
            print(f"COLDCLONE-HEADLESS-UNREADABLE exit={code} capture_id={result.capture_id} "
                  f"unreadable_sectors={result.unreadable_sectors} seconds={time.monotonic() - t0:.1f}",
                  flush=True)
        apply_on_done(cfg.on_done, args.live, text)
        return code
    except (KeyboardInterrupt, Exception) as e:
        # the job has run the fail hook already (it needs the configuration, which a typo lacks)
        if stop.signame and isinstance(e, (CancelledError, KeyboardInterrupt)):
            e = stop.error(e)
        code, msg = describe_failure(e)
        say(f"error: {msg}")
        print(f"COLDCLONE-HEADLESS-FAILED exit={code}: {msg.splitlines()[0] if msg else ''}", flush=True)
        return code
