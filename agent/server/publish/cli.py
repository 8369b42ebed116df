"""`coldclone-publish CAPTURE_DIR --cloud NAME`: upload a capture's image to Glance.

The cloud comes from the standard clouds.yaml (./clouds.yaml, ~/.config/openstack/,
/etc/openstack/, or OS_CLIENT_CONFIG_FILE); --cloud defaults to $OS_CLOUD. Publishing
twice finds the first image (by capture id, digest and file) and uploads nothing.
Exit codes as `coldclone` (docs/cli.md): 0 ok, 2 usage (not a capture, unknown cloud),
3 Glance unreachable, 5 Glance refused or damaged the upload.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...errors import EXIT_OK, EXIT_USAGE, ColdcloneError
from .glance import publish


def say(text: str) -> None:
    print(f"coldclone-publish: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-publish", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture_dir", metavar="CAPTURE_DIR",
                    help="a complete capture: <receiver root>/<capture id>")
    ap.add_argument("--cloud", default=os.environ.get("OS_CLOUD"),
                    help="cloud name in clouds.yaml (default: $OS_CLOUD)")
    ap.add_argument("--wait", type=float, default=3600, metavar="SECONDS",
                    help="how long Glance may take to turn the image active (default 3600)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="coldclone-publish: %(name)s: %(message)s")
    if not args.cloud:
        print("coldclone-publish: error: no cloud: give --cloud NAME (a cloud in clouds.yaml) "
              "or set OS_CLOUD", file=sys.stderr)
        return EXIT_USAGE
    try:
        rec = publish(args.capture_dir, args.cloud, say=say, wait_seconds=args.wait)
    except ColdcloneError as e:
        print(f"coldclone-publish: error: {e}", file=sys.stderr)
        return e.exit_code
    for k, v in sorted(rec.properties.items()):
        say(f"  {k} = {v}")
    print(f"COLDCLONE-PUBLISH-OK image_id={rec.image_id} cloud={rec.cloud} "
          f"reused={'yes' if rec.reused else 'no'}", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
