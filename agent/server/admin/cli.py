"""`coldclone-server`: the conversion server's own command (pip install 'coldclone[server]').

    coldclone-server init --root DIR --user NAME [...]     set this server up (again): init.py
    coldclone-server status --root DIR [--json] [--wave NAME]   every capture and its state: status.py
    coldclone-server web --listen ADDR:PORT --root DIR [--peer URL ...]   the wave page: web.py
    coldclone-server sync-file --output PATH   the self-contained `coldclone sync` file: agent/sync/build.py

Exit codes as `coldclone` (docs/cli.md): 0 ok, 1 internal error, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ColdcloneError, UsageError
from ..receive.convqueue import default_max_conversions
from ...sync.build import write_sync_file
from ...choices import ConvertEngine, ConvertNetwork, words
from . import status as S
from .init import DEFAULT_HOST_KEY, KEYS_BASE, Setup, init
from .web import DEFAULT_LISTEN, serve


def cmd_init(args) -> int:
    out = init(Setup(root=args.root, user=args.user, address=args.address, host_key=args.host_key,
                     keys=args.keys, identity=args.identity, rotate_key=args.rotate_key, convert=args.convert,
                     convert_engine=args.convert_engine, network=args.network, max_conversions=args.max_conversions,
                     bwlimit=args.bwlimit, iso=args.iso, livecd=args.livecd))
    for key in ("identity", "hostkey", "iso", "cmdline"):
        if key in out:
            print(f"{key}={out[key]}", flush=True)
    return EXIT_OK


def cmd_status(args) -> int:
    statuses = S.scan(args.root, args.name, stall=args.stall)
    if args.wave is not None:
        statuses = [s for s in statuses if s.wave == args.wave]
    if args.json:
        print(S.dumps(statuses))
    else:
        for line in S.text_lines(statuses) or ["no capture under " + args.root]:
            print(line)
    return EXIT_OK


def cmd_web(args) -> int:
    serve(args.listen, args.root, tuple(args.peer), name=args.name, refresh=args.refresh, stall=args.stall)
    return EXIT_OK


def cmd_sync_file(args) -> int:
    out = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"--output {args.output}: the directory {os.path.dirname(out)} does not exist")
    digest = write_sync_file(out)
    print(f"sync_file={out}", flush=True)
    print(f"sha256={digest}", flush=True)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="coldclone-server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    i = sub.add_parser("init", help="set up this conversion server (idempotent)")
    i.add_argument("--root", required=True, help="the receiver root: where captures are written")
    i.add_argument("--user", required=True, help="the service user sshd runs the receiver as (made if missing)")
    i.add_argument("--address", metavar="HOST[:PORT]",
                   help="how sources reach this server's sshd (default: its first global IPv4 address)")
    i.add_argument("--host-key", default=DEFAULT_HOST_KEY, metavar="FILE",
                   help=f"sshd's public host key, to pin (default {DEFAULT_HOST_KEY})")
    i.add_argument("--keys", metavar="DIR", help=f"where the agents' key pair is kept (default {KEYS_BASE}/USER)")
    i.add_argument("--identity", metavar="KEY",
                   help="take this agents' private key (another server's identity=, so one ISO reaches both)")
    i.add_argument("--rotate-key", action="store_true", help="replace the agents' key (the old one stops working)")
    i.add_argument("--convert", action="store_true", help="convert every complete capture (coldclone-receive --convert)")
    i.add_argument("--convert-engine", choices=words(ConvertEngine), default=ConvertEngine.VIRT_V2V.value)
    i.add_argument("--network", choices=words(ConvertNetwork), default=ConvertNetwork.DHCP.value,
                   help="with --convert: coldclone-convert's --network (dhcp, the default, or keep the static addresses)")
    i.add_argument("--max-conversions", type=int, metavar="N",
                   help=f"with --convert: conversions at once (default from cores and memory: "
                        f"{default_max_conversions()} here)")
    i.add_argument("--bwlimit", metavar="RATE", help="cap the total rate of all sessions (100mbit, 1gbit, 50M)")
    i.add_argument("--iso", action="store_true", help="also build the live ISO with the key and the pin baked in")
    i.add_argument("--livecd", metavar="DIR", help="the source tree's livecd/ (for --iso)")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("status", help="every capture under the root and its state")
    s.add_argument("--root", required=True)
    s.add_argument("--json", action="store_true", help="a JSON list, one object per capture")
    s.add_argument("--wave", metavar="NAME", help="only the captures of this wave")
    s.add_argument("--name", help="this conversion server's name in the output (default: its host name)")
    s.add_argument("--stall", type=float, default=S.STALL_SECONDS, metavar="SECONDS",
                   help=f"a running capture that has not moved for this long is stalled (default {S.STALL_SECONDS:g})")
    s.set_defaults(func=cmd_status)

    w = sub.add_parser("web", help="the wave page (read-only) and its API at /api/status")
    w.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"where to serve it (default {DEFAULT_LISTEN}: this machine only)")
    w.add_argument("--root", required=True)
    w.add_argument("--peer", action="append", default=[], metavar="URL",
                   help="another conversion server's page (http://HOST:PORT) to show with this one; repeat")
    w.add_argument("--name", help="this conversion server's name on the page (default: its host name)")
    w.add_argument("--refresh", type=float, default=3.0, metavar="SECONDS", help="how often the page refreshes")
    w.add_argument("--stall", type=float, default=S.STALL_SECONDS, metavar="SECONDS",
                   help=f"a running capture that has not moved for this long is stalled (default {S.STALL_SECONDS:g})")
    w.set_defaults(func=cmd_web)

    f = sub.add_parser("sync-file", help="write the self-contained `coldclone sync` file sources run (python3 FILE sync ...)")
    f.add_argument("--output", required=True, metavar="PATH", help="where to write it, e.g. /srv/coldclone/coldclone")
    f.set_defaults(func=cmd_sync_file)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="coldclone-server: %(message)s")
    if not args.command:
        ap.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except ColdcloneError as e:
        print(f"coldclone-server: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "web" else EXIT_INTERNAL
    except OSError as e:
        print(f"coldclone-server: error: {e}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
