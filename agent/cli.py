"""`coldclone`: the agent's command line (headless front end over the core).

Exit codes (docs/cli.md): 0 ok, 1 internal error, 2 usage error,
3 connection / authentication / host key, 4 source read error,
5 conversion server failure, 6 cancelled.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

from . import __version__
from .errors import EXIT_CANCELLED, EXIT_INTERNAL, EXIT_OK, ColdcloneError, UsageError

log = logging.getLogger("coldclone")

SIZE_RE = re.compile(r"^(\d+)([KMG]i?B?)?$", re.I)


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"size {text!r}: write a number with an optional K, M or G suffix (e.g. 4M)")
    n = int(m.group(1))
    unit = (m.group(2) or "").upper()[:1]
    return n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]


# Progress lines and the closing summary live with the estimator (ETA, rates, bottleneck).
from .estimate.progress import ProgressPrinter, print_summary  # noqa: E402,F401


def _target(args):
    from .transport.open import open_target

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise UsageError(f"--password-env {args.password_env}: that environment variable is not set")
    return open_target(args.to, identity=args.identity, hostkey=args.hostkey,
                       known_hosts=args.known_hosts, password=password, timeout=args.timeout)


def cmd_capture(args) -> int:
    from .capture.session import run_capture
    from .capture.stream import StreamOptions

    from .capture.stream import parse_compress

    codec, level = parse_compress(args.compress)
    opts = StreamOptions(mode=args.mode, chunk_size=parse_size(args.chunk_size),
                         block_size=parse_size(args.block_size), codec=codec, level=level or 1,
                         workers=args.workers)
    target = _target(args)
    readiness = _inspect(args.disk)
    cancel = threading.Event()
    printer = ProgressPrinter(args.progress_interval)

    def on_sigint(signum, frame):
        # First Ctrl-C: stop at the next record boundary, so the receiver gets a
        # clean ABORT and discards the partial capture. Second: stop now.
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("coldclone: cancelling after the current chunk (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with printer.ticking():
            result = run_capture(args.disk, target.connect, opts, capture_id=args.capture_id,
                                 image_format=args.format, on_event=printer, cancel=cancel,
                                 readiness=readiness)
    finally:
        signal.signal(signal.SIGINT, previous)
        target.close()
    print_summary(result)
    for line in readiness.summary():
        print(f"coldclone: {line}")
    return EXIT_OK


def _inspect(disks: list[str]):
    """The readiness report of the named disks (discovery, then read-only inspection)."""
    from .discover.populate import discover
    from .inspect.report import ReadinessReport, inspect_for_capture

    try:
        # a loop device named on purpose is a source like any other (tests, image files)
        inv = discover(include_loop=any("/loop" in d or d.startswith("loop") for d in disks),
                       only=disks)
    except Exception as e:  # advice: discovery trouble here must not stop the capture
        return ReadinessReport(error=f"discovery for inspection failed: {e}")
    report = inspect_for_capture(inv)
    for line in report.summary():
        print(f"coldclone: {line}", flush=True)
    return report


def cmd_digest(args) -> int:
    from .protocol import digest_file

    for p in args.path:
        print(f"{digest_file(p, parse_size(args.block_size))}  {p}")
    return EXIT_OK


# subcommand -> (module with main(argv), help line)
DELEGATED = {
    "discover": (".discover.cli", "list disks, controllers, RAID, iSCSI/FC, multipath (--json, --inspect)"),
    "estimate": (".estimate.cli", "predict how long a capture will take (the server's downtime)"),
    "headless": (".headless", "unattended capture configured on the kernel command line"),
    "tui": (".tui.app", "the operator's text interface"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="coldclone", description="Capture a server's disks into verified qcow2 images.")
    ap.add_argument("--version", action="version", version=f"coldclone {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every step (commands, guard, host key)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("capture", help="capture disks to a conversion server (headless)")
    c.add_argument("--disk", action="append", required=True, metavar="/dev/X",
                   help="source disk (repeat for several)")
    c.add_argument("--to", required=True, metavar="URL", help="ssh://user@host[:port]/path or file:///path")
    c.add_argument("--identity", metavar="KEY", help="private key for the conversion server")
    c.add_argument("--hostkey", metavar="SHA256:...", help="pin the server's host key fingerprint")
    c.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default ~/.ssh/known_hosts)")
    c.add_argument("--password-env", metavar="VAR", help="read an SSH password from this variable (discouraged)")
    c.add_argument("--mode", default="nonzero", choices=["nonzero", "full"],
                   help="nonzero: skip all-zero blocks (default); full: send every byte")
    c.add_argument("--compress", default="zstd:1", help="zstd[:LEVEL] or none (default zstd:1)")
    c.add_argument("--chunk-size", default="4M", help="read size (default 4M)")
    c.add_argument("--block-size", default="64K", help="zero-skip and digest granularity (default 64K)")
    c.add_argument("--workers", type=int, default=2, help="threads hashing and compressing (default 2)")
    c.add_argument("--format", default="qcow2", choices=["qcow2", "raw"], help="image format on the server")
    c.add_argument("--capture-id", help="name of the capture directory (default host-date-random)")
    c.add_argument("--progress-interval", type=float, default=5.0, metavar="SECONDS")
    c.add_argument("--timeout", type=float, default=20.0, help="connect timeout in seconds")
    c.set_defaults(func=cmd_capture)

    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)

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
