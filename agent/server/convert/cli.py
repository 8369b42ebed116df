"""`coldclone-convert CAPTURE_DIR`: make a verified capture boot on KVM virtio.

Writes <disk>.kvm.qcow2 beside each verified <disk>.qcow2 (which is left untouched, as
evidence), a `conversion` section in manifest.json, and conversion.log in the capture dir.

Exit codes: 0 converted; 2 the directory is not a complete, verified capture; 5 the conversion
failed (a tool broke: the manifest and the log say which); 7 not converted (no OS on the disks,
an OS we cannot convert, or with --engine fixups an initramfs without virtio drivers that the
guest's own tools cannot rebuild): the capture stays complete and verified.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...errors import EXIT_SERVER, EXIT_USAGE, UsageError
from .convert import convert, read_capture
from .model import CopyMethod, Engine, NetworkPolicy, Outcome

EXIT_NOT_CONVERTED = 7


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture_dir", metavar="CAPTURE_DIR", help="a complete capture: <receiver root>/<capture id>")
    ap.add_argument("--engine", choices=[e.value for e in Engine], default=Engine.VIRT_V2V.value,
                    help="virt-v2v (default): our fix-ups, then virt-v2v (virtio drivers in the initramfs); "
                         "fixups: our libguestfs fix-ups only (minutes faster, for guests whose "
                         "initramfs already has virtio)")
    ap.add_argument("--overlay", action="store_true",
                    help="with --engine fixups: write each <disk>.kvm.qcow2 as a qcow2 overlay backed by the "
                         "evidence (instant, but it needs the evidence beside it) instead of a standalone copy")
    ap.add_argument("--network", choices=[p.value for p in NetworkPolicy], default=NetworkPolicy.DHCP.value,
                    help="the primary interface on the instance's first virtio NIC (eth0): dhcp (default, "
                         "Neutron's) switches it to DHCP; keep keeps its static addresses, routes and DNS "
                         "(for a port created with the old fixed IP). Other interfaces are disabled either way")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="coldclone-convert: %(message)s")
    engine = Engine(args.engine)
    if args.overlay and engine is not Engine.FIXUPS:
        print("coldclone-convert: --overlay needs --engine fixups (virt-v2v always writes a new image)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        read_capture(args.capture_dir)     # refuse before writing anything into the directory
    except UsageError as e:
        print(f"coldclone-convert: {e}", file=sys.stderr)
        return e.exit_code
    # Every fix is in the manifest and, with the tools' own lines, in conversion.log.
    log_handler = logging.FileHandler(os.path.join(args.capture_dir, "conversion.log"))
    log_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(log_handler)
    try:
        conv = convert(args.capture_dir, engine, CopyMethod.OVERLAY if args.overlay else CopyMethod.COPY,
                       network=NetworkPolicy(args.network))
    except UsageError as e:
        print(f"coldclone-convert: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
    print(f"coldclone-convert: {conv.message}")
    for fx in conv.fixes:
        print(f"  fixed {fx.render()}")
    for w in conv.warnings:
        print(f"  left: {w}")
    if conv.result is Outcome.CONVERTED:
        return 0
    return EXIT_NOT_CONVERTED if conv.result is Outcome.NOT_CONVERTED else EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
