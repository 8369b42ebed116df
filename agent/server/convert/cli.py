"""`coldclone-convert CAPTURE_DIR`: make a verified capture boot on KVM virtio.

Writes <disk>.kvm.qcow2 beside each verified <disk>.qcow2 (which is left untouched, as
evidence), a `conversion` section in manifest.json, and conversion.log in the capture dir.

Exit codes: 0 converted; 2 the directory is not a complete, verified capture (or one whose
converted images would take the names of its verified ones: nothing is written); 5 the
conversion failed (a tool broke, the disk is full: the manifest and the log say which); 7 not
converted (no OS on the disks, an OS we cannot convert, or with --engine fixups an initramfs
without virtio drivers that the guest's own tools cannot rebuild): the capture stays complete
and verified.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...errors import EXIT_SERVER, EXIT_USAGE, UsageError
from ..receive.convqueue import default_max_conversions
from .convert import convert, read_capture
from .model import CopyMethod, Outcome
from ...choices import ConvertEngine, ConvertNetwork

EXIT_NOT_CONVERTED = 7


class LogFile(logging.Handler):
    """conversion.log in the capture directory, as long as it can be written: a full filesystem
    (the conversion then fails and says why) costs the log one line on stderr, never a
    traceback per message."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        try:
            self.stream = open(path, "a", encoding="utf-8")
        except OSError as e:
            self.stream = None
            self._gave_up(e)

    def _gave_up(self, e: OSError) -> None:
        print(f"coldclone-convert: cannot write {self.path} ({e.strerror}); the log goes to stderr only",
              file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except OSError as e:
            self.close()
            self._gave_up(e)

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass    # what could not be flushed is lost with the space it needed
        super().close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture_dir", metavar="CAPTURE_DIR", help="a complete capture: <receiver root>/<capture id>")
    ap.add_argument("--engine", choices=[e.value for e in ConvertEngine], default=ConvertEngine.VIRT_V2V.value,
                    help="virt-v2v (default): our fix-ups, then virt-v2v (virtio drivers in the initramfs); "
                         "fixups: our libguestfs fix-ups only (minutes faster, for guests whose "
                         "initramfs already has virtio)")
    ap.add_argument("--overlay", action="store_true",
                    help="with --engine fixups: write each <disk>.kvm.qcow2 as a qcow2 overlay backed by the "
                         "evidence (instant, but it needs the evidence beside it) instead of a standalone copy")
    ap.add_argument("--network", choices=[p.value for p in ConvertNetwork], default=ConvertNetwork.DHCP.value,
                    help="the primary interface on the instance's first virtio NIC (eth0): dhcp (default, "
                         "Neutron's) switches it to DHCP; keep keeps its static addresses, routes and DNS "
                         "(for a port created with the old fixed IP). Other interfaces are disabled either way")
    ap.add_argument("--max-conversions", type=int, metavar="N",
                    help=f"conversions that run at once in the queue's root; this one waits for a free slot "
                         f"(default from the cores and memory: {default_max_conversions()} here)")
    ap.add_argument("--queue", metavar="ROOT",
                    help="the receiver root whose conversion queue this joins (default: the capture's parent)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.max_conversions is not None and args.max_conversions < 1:
        ap.error("--max-conversions N: N of at least 1")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="coldclone-convert: %(message)s")
    engine = ConvertEngine(args.engine)
    if args.overlay and engine is not ConvertEngine.FIXUPS:
        print("coldclone-convert: --overlay needs --engine fixups (virt-v2v always writes a new image)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        read_capture(args.capture_dir)     # refuse before writing anything into the directory
    except UsageError as e:
        print(f"coldclone-convert: {e}", file=sys.stderr)
        return e.exit_code
    # Every fix is in the manifest and, with the tools' own lines, in conversion.log.
    log_handler = LogFile(os.path.join(args.capture_dir, "conversion.log"))
    logging.getLogger().addHandler(log_handler)
    try:
        conv = convert(args.capture_dir, engine, CopyMethod.OVERLAY if args.overlay else CopyMethod.COPY,
                       network=ConvertNetwork(args.network), max_conversions=args.max_conversions, queue_root=args.queue)
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
