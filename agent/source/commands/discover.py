"""`coldclone discover`: what this machine has, and what would be captured.

    coldclone discover [--json] [--include-loop] [--inspect] [--target DEV]
                       [--boot-device DEV] [--disks DEV,...] [--record FILE]
                       [--from-snapshot FILE]

--record writes the raw udev/sysfs facts of this machine as a fixture for
tests (send it to us from hardware we have no fixture for); --from-snapshot
replays one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..capture.inuse import SourceInUseError
from ..discover import populate, snapshot
from ..discover.model import to_dict
from ..discover.probe import NoProbes, Probes
from ..discover.render import render
from ... import records
from ...errors import EXIT_OK, EXIT_USAGE, ColdcloneError
from ..inspect.disk import inspect_disk


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldclone discover",
                                description="List disks, controllers, RAID, iSCSI, multipath "
                                            "and what would be captured.")
    p.add_argument("--json", action="store_true", help="print the inventory as JSON")
    p.add_argument("--include-loop", action="store_true",
                   help="offer loop devices as sources (tests, image files)")
    p.add_argument("--inspect", action="store_true",
                   help="also inspect the OS on each disk offered (mounted read-only) and "
                        "print its cloud-readiness report")
    p.add_argument("--target", metavar="DEV|DIR",
                   help="the disk (or a directory on it) a local capture writes to")
    p.add_argument("--boot-device", metavar="DEV",
                   help="the device the live system booted from, when not mounted at "
                        "/run/live/medium")
    p.add_argument("--disks", metavar="DEV[,DEV...]",
                   help="offer only these disks (names, /dev paths or md arrays, which "
                        "stand for their member disks)")
    p.add_argument("--record", metavar="FILE", help="save this machine's udev/sysfs facts")
    p.add_argument("--from-snapshot", metavar="FILE", help="replay a recorded machine")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # argparse exits on --help and on errors
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    if args.inspect and args.from_snapshot:
        print("coldclone discover: --inspect needs the real disks, not a snapshot",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.from_snapshot:
            snap = snapshot.load(args.from_snapshot)
            probes = NoProbes()
        else:
            snap = snapshot.take()
            probes = Probes()
        if args.record:
            snapshot.save(snap, args.record)
        inv = populate.from_snapshot(snap, probes=probes, include_loop=args.include_loop,
                                     target=args.target, boot_device=args.boot_device,
                                     resolve_paths=not args.from_snapshot,
                                     only=[x for x in (args.disks or "").split(",") if x]
                                     or None)
        reports = {}
        if args.inspect:
            for disk in inv.capture_set():
                try:
                    reports[disk.name] = inspect_disk(disk, inventory=inv)
                except SourceInUseError as e:   # this disk only: the others are still reported
                    print(f"coldclone discover: {disk.name} not inspected: {e}", file=sys.stderr)
                    reports[disk.name] = None
    except (ColdcloneError, OSError, ValueError) as e:
        print(f"coldclone discover: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, ColdcloneError) else 1
    if args.json:
        doc = to_dict(inv)
        if args.inspect:
            doc["source_os"] = {name: (records.encode(r) if r else None) for name, r in reports.items()}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(inv))
        for name, report in reports.items():
            sys.stdout.write(f"\n=== source OS on {name} ===\n")
            sys.stdout.write(report.render() if report else "no operating system found\n")
    return EXIT_OK


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
