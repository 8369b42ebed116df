"""`coldclone`: the agent's command line (headless front end over the core).

Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 usage error,
3 connection / authentication / host key, 4 source read error,
5 conversion server failure, 6 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from .. import __version__
from .capture.guard import held, release_stale
from .capture.stop import StopOnSignal
from ..choices import IscsiMode
from .config import add_flags, config_from_args, parse_size
from .console import JobConsole
from ..errors import EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, CancelledError, ColdcloneError
from .job import CaptureJob
from ..protocol import digest_file

log = logging.getLogger("coldclone")

# Flags `coldclone capture` shares with the kernel command line keys (agent/config.py OPTIONS).
CAPTURE_FLAGS = ("server", "identity", "hostkey", "known_hosts", "password_env", "mode", "compress",
                 "on_read_error", "chunk_size", "block_size", "workers", "format", "capture_id",
                 "allow_mounted", "calibrate", "progress", "timeout", "resume", "reconnect", "stall",
                 "failover", "wave", "bwlimit")


def cmd_capture(args) -> int:
    # The disks named are captured: no iSCSI login, no hooks (those are the live system's).
    cfg = config_from_args(args, disks=args.disk, iscsi=IscsiMode.OFF)
    cancel = threading.Event()
    console = JobConsole(cfg.progress, notes=sys.stderr)

    def on_first(signame: str) -> None:
        if signame == "SIGINT":
            print("coldclone: cancelling after the current chunk (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

    try:
        with StopOnSignal(cancel, on_first) as stop:
            try:
                result = CaptureJob(cfg, notify=console, cancel=cancel, capture_named=True).run()
            except (CancelledError, KeyboardInterrupt) as e:
                if stop.signame:
                    raise stop.error(e) from None
                raise
    finally:
        console.close()
    # EXIT_UNREADABLE when sectors were mapped as zeros: verified, but never a plain success
    return result.exit_code if result is not None else EXIT_OK


def cmd_release(args) -> int:
    """Give back what a killed coldclone left read-only; never what a running one guards."""
    lines = release_stale()
    for rec in held():
        pids = ", ".join(sorted({str(o.pid) for o in rec.owners if o.alive()}))
        lines.append(f"{rec.dev} left read-only: coldclone pid {pids} is still using it "
                     f"(stop that capture to release it)")
    for line in lines or ["nothing to release: no device is guarded"]:
        print(f"coldclone: {line}")
    return EXIT_OK


def cmd_digest(args) -> int:
    for p in args.path:
        print(f"{digest_file(p, parse_size(args.block_size))}  {p}")
    return EXIT_OK


# subcommand -> (module with main(argv), help line)
DELEGATED = {
    "discover": (".commands.discover", "list disks, controllers, RAID, iSCSI/FC, multipath (--json, --inspect)"),
    "estimate": (".commands.estimate", "predict how long a capture will take (the server's downtime)"),
    "headless": (".headless", "unattended capture configured on the kernel command line"),
    "tui": (".tui.app", "the operator's text interface"),
    # the warm sync from a running source: the self-contained file's own code (agent/sync/)
    "sync": ("..sync.cli", "send a running server's disks to a warm capture (two-phase migration)"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="coldclone", description="Capture a server's disks into verified qcow2 images.")
    ap.add_argument("--version", action="version", version=f"coldclone {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every step (commands, guard, host key)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("capture", help="capture disks to a conversion server (headless)")
    c.add_argument("--disk", action="append", required=True, metavar="/dev/X",
                   help="source disk (repeat for several)")
    add_flags(c, CAPTURE_FLAGS, required=("server",))
    c.set_defaults(func=cmd_capture)

    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)

    r = sub.add_parser("release", help="restore the read-only state of disks a killed coldclone left guarded")
    r.set_defaults(func=cmd_release)

    d = sub.add_parser("digest", help="print the coldclone disk digest of a device or raw image")
    d.add_argument("path", nargs="+")
    d.add_argument("--block-size", default="64K")
    d.set_defaults(func=cmd_digest)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        # These own their flags; same exit-code contract (docs/cli.md), and the same last word
        # on what they did not catch themselves.
        import importlib

        sub = importlib.import_module(DELEGATED[argv[0]][0], __package__)
        return _plainly(lambda: sub.main(argv[1:]))
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    # The operator always sees which devices were write-protected, and that they were released.
    logging.getLogger("coldclone.guard").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.command:
        ap.print_help()
        return 2
    return _plainly(lambda: args.func(args))


def _plainly(call) -> int:
    """Run a command; whatever escapes it is said in one line, never as a bare traceback."""
    try:
        return call()
    except ColdcloneError as e:
        print(f"coldclone: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("coldclone: error: cancelled by the operator", file=sys.stderr)
        return EXIT_CANCELLED
    except OSError as e:       # str() keeps the path
        log.debug("system error", exc_info=True)
        print(f"coldclone: error: {e} (run with -v for details)", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:  # a bug: say so plainly, with the traceback in the log
        log.exception("internal error")
        print(f"coldclone: internal error: {e!r} (run with -v and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
