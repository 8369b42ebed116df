"""`coldclone sync`: a warm sync of a running server's disks into a capture on the conversion server.

    coldclone sync --disk DEV [--disk DEV ...] --to ssh://user@host[:port][/path] --identity KEY
                   --hostkey SHA256:... [--capture-id ID] [--bwlimit RATE]

Prints `capture_id=ID` and exits 0 once the server has stored the sync. Exit codes as `coldclone`
(agent/errors.py, docs/cli.md): 2 usage, 3 connection or host key, 4 source disk, 5 server.
The same main() runs from the self-contained file (`python3 coldclone sync ...`, built by
`coldclone-server sync-file`) and from the installed agent (`coldclone sync ...`).

Standard library only, Python 3.6 syntax.
"""

import argparse
import logging
import os
import re
import sys

from .. import __version__
from ..bwlimit import EXAMPLES, parse_rate
from ..errors import EXIT_CANCELLED, EXIT_INTERNAL, EXIT_USAGE, ColdcloneError, UsageError
from . import disk as D
from . import session as S
from .ssh import Pinned, normalize_pin, parse_target

log = logging.getLogger("coldclone.sync")

PROG = "coldclone sync"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s (see %s --help)" % (message, PROG))


def build_parser():
    ap = _Parser(prog=PROG, description=(
        "Send a running server's disks to a warm capture on the conversion server (a head start "
        "for the cutover from the coldclone ISO, which then sends only what changed). Run it again "
        "to send what changed since the last sync."))
    ap.add_argument("--disk", action="append", required=True, metavar="DEV",
                    help="a whole source disk, e.g. /dev/sda (repeat for several)")
    ap.add_argument("--to", required=True, metavar="URL", help="ssh://user@host[:port][/path] of the conversion server")
    ap.add_argument("--identity", required=True, metavar="KEY", help="the agents' private key (coldclone-server init's identity=)")
    ap.add_argument("--hostkey", required=True, metavar="SHA256:...",
                    help="the conversion server's host key fingerprint (coldclone-server init's hostkey=)")
    ap.add_argument("--capture-id", metavar="ID",
                    help="the warm capture to update (default: found on the server by the disks' identity, "
                         "else a new one)")
    ap.add_argument("--bwlimit", metavar="RATE", help="cap the sync's bandwidth: " + EXAMPLES)
    ap.add_argument("-v", "--verbose", action="store_true", help="log every step (ssh, host key, replies)")
    ap.add_argument("--version", action="version", version="coldclone sync " + __version__)
    return ap


def run(argv):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    target = parse_target(args.to)
    bwlimit = parse_rate(args.bwlimit, "--bwlimit") if args.bwlimit else None
    pin = normalize_pin(args.hostkey)
    if not re.match(r"^SHA256:[A-Za-z0-9+/]{43}$", pin):
        raise UsageError("--hostkey %r is not a SHA256 fingerprint (SHA256: and 43 characters, as "
                         "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it)" % args.hostkey)
    if not os.path.isfile(args.identity):
        raise UsageError("--identity %s: no such key file (the agents' private key from coldclone-server init)"
                         % args.identity)
    if os.geteuid() != 0:
        log.warning("not running as root: the disks may not be readable")
    disks = [D.probe(p) for p in args.disk]
    D.lower_priority()
    with Pinned(target, args.identity, pin) as pinned:
        result = S.run_sync(pinned, disks, capture_id=args.capture_id, bwlimit=bwlimit)
    sent = result.wire_bytes
    read = sum(st.bytes_read for st in result.stats.values())
    S.say("sync stored: read %d bytes, sent %d bytes in %.1f s" % (read, sent, result.seconds))
    print("capture_id=%s" % result.capture_id, flush=True)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv)
    except ColdcloneError as e:
        print("coldclone sync: error: %s" % e, file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("coldclone sync: error: cancelled by the operator (the server keeps what it stored: run the "
              "same sync again to continue)", file=sys.stderr)
        return EXIT_CANCELLED
    except SystemExit as e:        # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except OSError as e:
        log.debug("system error", exc_info=True)
        print("coldclone sync: error: %s (run with -v for details)" % e, file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:   # a bug: said plainly, the traceback in the log
        log.exception("internal error")
        print("coldclone sync: internal error: %r (run with -v and report it)" % (e,), file=sys.stderr)
        return EXIT_INTERNAL
