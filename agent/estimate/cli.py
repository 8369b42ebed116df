"""`coldclone estimate`: how long a capture will take (the server's downtime), without capturing.

    coldclone estimate [--disk /dev/X ...] [--to URL [--identity KEY] [--hostkey SHA256:...]
                       [--known-hosts FILE]] [--mode used|nonzero|full] [--format qcow2|raw]
                       [--calibrate SECONDS] [--json] [--include-loop]

Without --disk: the disks discovery offers for capture. Without --to: no link
is counted, and the same capture is shown over USB 2.0/3.0, e-SATA and NFS.
With --to and --calibrate > 0 (default 3 s): a bounded probe through the real
target replaces the table's link rate; it leaves nothing on the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..config import MODES
from ..errors import EXIT_OK, EXIT_USAGE, ColdcloneError, UsageError

log = logging.getLogger("coldclone.estimate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldclone estimate",
                                description="Predict how long a capture takes: the server's downtime.")
    p.add_argument("--disk", action="append", default=[], metavar="/dev/X",
                   help="source disk (repeat for several; default: what `coldclone discover` offers)")
    p.add_argument("--to", metavar="URL", help="ssh://user@host[:port]/path, file:///path or nfs://host/export/path")
    p.add_argument("--identity", metavar="KEY", help="private key for the conversion server")
    p.add_argument("--hostkey", metavar="SHA256:...", help="pin the server's host key fingerprint")
    p.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default ~/.ssh/known_hosts)")
    p.add_argument("--password-env", metavar="VAR", help="read an SSH password from this variable (discouraged)")
    p.add_argument("--mode", default="nonzero", choices=list(MODES),
                   help="used: only the blocks the filesystems use (the capture's own used map); "
                        "nonzero: skip all-zero blocks (default); full: send every byte")
    p.add_argument("--format", default="qcow2", choices=["qcow2", "raw"], help="image format on the server")
    p.add_argument("--workers", type=int, default=2, help="hashing/compression threads the capture will use")
    p.add_argument("--calibrate", type=float, default=3.0, metavar="SECONDS",
                   help="time spent measuring the source and the target (default 3; 0: table rates only)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.add_argument("--include-loop", action="store_true", help="offer loop devices as sources (tests)")
    p.add_argument("--timeout", type=float, default=20.0, help="connect timeout in seconds")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _inventory(args):
    """Discovery, for the disks' links and the default disk set; optional when --disk is given."""
    from ..discover.populate import discover

    target = None
    if args.to and args.to.startswith("file://"):
        target = args.to[len("file://"):]
    try:
        return discover(include_loop=args.include_loop or any("/loop" in d for d in args.disk), target=target)
    except Exception as e:  # discovery is a help here, not a must, when the disks are named
        if not args.disk:
            raise
        log.warning("discovery failed (%s); estimating the named disks without their link facts", e)
    return None


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    target = None
    try:
        if args.calibrate < 0:
            raise UsageError("--calibrate SECONDS: give 0 (no measuring) or a positive number of seconds")
        if args.to:
            from ..transport.url import parse_target

            parse_target(args.to)   # a bad URL is a usage error before anything is looked at
        inv = _inventory(args)
        connect = local_path = None
        if args.to:
            if args.calibrate > 0:
                from ..transport.open import open_target

                password = None
                if args.password_env:
                    password = os.environ.get(args.password_env)
                    if password is None:
                        raise UsageError(f"--password-env {args.password_env}: that variable is not set")
                target = open_target(args.to, identity=args.identity, hostkey=args.hostkey,
                                     known_hosts=args.known_hosts, password=password, timeout=args.timeout)
                connect, local_path = target.connect, target.local_path
        from .plan import estimate_capture

        note = None if args.json else (lambda text: print(f"coldclone: {text}", file=sys.stderr, flush=True))
        est = estimate_capture(inv, args.disk, args.to, args.mode, calibrate_seconds=args.calibrate,
                               connect=connect, local_path=local_path, workers=args.workers,
                               image_format=args.format, on_note=note)
    except ColdcloneError as e:
        print(f"coldclone: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if target is not None:
            target.close()
    if args.json:
        print(json.dumps(est.to_dict(), indent=2))
    else:
        for line in est.lines():
            print(line)
    return EXIT_OK
