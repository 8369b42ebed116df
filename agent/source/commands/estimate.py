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
import logging
import sys

from ..config import add_flags, config_from_args
from ..discover.populate import discover
from ... import records
from ...errors import EXIT_OK, EXIT_USAGE, ColdcloneError
from ..estimate.plan import estimate_capture
from ..job import cfg_password
from ..transport.open import open_target
from ...bwlimit import human_rate

log = logging.getLogger("coldclone.estimate")


# Flags shared with `coldclone capture` and the kernel command line keys (agent/config.py).
ESTIMATE_FLAGS = ("server", "identity", "hostkey", "known_hosts", "password_env", "mode", "format",
                  "workers", "calibrate", "timeout", "bwlimit")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldclone estimate",
                                description="Predict how long a capture takes: the server's downtime.")
    p.add_argument("--disk", action="append", default=[], metavar="/dev/X",
                   help="source disk (repeat for several; default: what `coldclone discover` offers)")
    add_flags(p, ESTIMATE_FLAGS)
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.add_argument("--include-loop", action="store_true", help="offer loop devices as sources (tests)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _inventory(args, server: str | None):
    """Discovery, for the disks' links and the default disk set; optional when --disk is given."""
    target = None
    if server and server.startswith("file://"):
        target = server[len("file://"):]
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
    cfg = config_from_args(args)
    # several --to: the estimate is for the first (a wave's servers are alike)
    server = cfg.server[0] if cfg.server else None
    target = None
    try:
        inv = _inventory(args, server)
        connect = local_path = None
        if server and cfg.calibrate > 0:
            target = open_target(server, identity=cfg.identity, hostkey=cfg.hostkey,
                                 known_hosts=cfg.known_hosts, password=cfg_password(cfg), timeout=cfg.timeout)
            connect, local_path = target.connect, target.local_path
        note = None if args.json else (lambda text: print(f"coldclone: {text}", file=sys.stderr, flush=True))
        est = estimate_capture(inv, args.disk, server, cfg.mode, calibrate_seconds=cfg.calibrate,
                               connect=connect, local_path=local_path, workers=cfg.workers,
                               image_format=cfg.format, on_note=note, rate_cap=cfg.bwlimit,
                               rate_cap_source=f"bwlimit={human_rate(cfg.bwlimit)}" if cfg.bwlimit else "")
    except ColdcloneError as e:
        print(f"coldclone: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        if target is not None:
            target.close()
    if args.json:
        print(records.dumps(est, indent=2))
    else:
        for line in est.lines():
            print(line)
    return EXIT_OK
