"""`coldclone-receive --root DIR`: the conversion-server end, run by sshd per capture.

Meant to be the forced command of the agent's key, so a lost ISO gives no shell:

    command="coldclone-receive --root /srv/coldclone",restrict ssh-ed25519 AAAA...

Under a forced command sshd puts what the agent asked to run into
SSH_ORIGINAL_COMMAND; its --root may only name a directory inside ours.
The stream comes on stdin; JSON-line replies go to stdout; the log to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from ..runcmd import spawn
from .receiver import Receiver


def requested_root_from_env() -> str | None:
    cmd = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == "--root" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--root="):
            return w.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-receive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="directory the captures are written into (and confined to)")
    ap.add_argument("--keep-raw", action="store_true", help="keep the raw image next to the qcow2")
    ap.add_argument("--convert", action="store_true",
                    help="once the capture is complete and verified, queue coldclone-convert on it (detached; "
                         "one conversion at a time per root; its output in <capture>/conversion.out)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="coldclone-receive: %(message)s")
    rx = Receiver(args.root, sys.stdout.buffer, requested_root=requested_root_from_env(),
                  keep_raw=args.keep_raw)
    rc = rx.run(sys.stdin.buffer)
    if rc == 0 and args.convert and rx.cap is not None:
        queue_conversion(rx.cap.final_path)
    return rc


def queue_conversion(capture_path: str) -> int:
    """Start `coldclone-convert capture_path` detached: the agent's SSH session ends with the
    capture, the conversion waits its turn on the root's lock. By command, not by import: the
    converter builds on this package, not the other way round."""
    here = os.path.join(os.path.dirname(sys.executable), "coldclone-convert")
    exe = here if os.access(here, os.X_OK) else "coldclone-convert"
    return spawn([exe, capture_path], os.path.join(capture_path, "conversion.out"))


if __name__ == "__main__":
    sys.exit(main())
