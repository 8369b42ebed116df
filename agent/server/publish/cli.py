"""`coldclone-publish CAPTURE_DIR --cloud NAME [--disk-format qcow2|raw|vmdk]
[--adapter ide|lsiLogic|lsiLogicsas|paraVirtual]`: every disk of a capture into Glance, and
the launch plan that starts the server from them.

The cloud comes from the standard clouds.yaml (./clouds.yaml, ~/.config/openstack/,
/etc/openstack/, or OS_CLIENT_CONFIG_FILE); --cloud defaults to $OS_CLOUD. The disk format
defaults to what the cloud's Glance takes (raw when its default store is Ceph RBD, else qcow2);
vmdk is a monolithicSparse VMDK for Nova's VMware driver, attached on --adapter (default
lsiLogic). Publishing twice finds each disk's first image and uploads nothing.
Exit codes as `coldclone` (docs/cli.md): 0 ok, 2 usage (not a capture, unknown cloud, a format
the cloud does not take), 3 Glance unreachable, 5 Glance refused or damaged an upload.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ...errors import EXIT_OK, EXIT_USAGE, ColdcloneError
from ...manifest import PublishRecord
from .glance import publish
from ...choices import DiskFormat, VmdkAdapter


def say(text: str) -> None:
    print(f"coldclone-publish: {text}", flush=True)


def render_plan(rec: PublishRecord) -> list[str]:
    """The launch plan as the operator reads it: images in order, flavor, network, the script."""
    out = [rec.plan.test_notice] if rec.plan is not None and rec.plan.test_notice else []
    boot = rec.boot
    if boot is not None:
        out.append(f"boot image: {boot.image_id} ({boot.disk}, {boot.disk_format}, {boot.image_kind})")
    for img in rec.data:
        out.append(f"data image {img.position}: {img.image_id} ({img.disk}, {img.disk_format}) -> a Cinder volume")
    plan = rec.plan
    if plan is None:
        return out
    f = plan.flavor
    out.append(f"flavor: {f.vcpus} vCPUs, {f.ram_mib} MiB RAM, {f.disk_gib} GiB root disk ({f.basis})")
    out.append(f"network: {plan.network.addresses.value}: {plan.network.summary}")
    out.append("launch plan (sh; set " + ", ".join(f"${v}" for v in plan.variables) + " first):")
    out += ["  " + line for line in plan.script().splitlines()]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-publish", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture_dir", metavar="CAPTURE_DIR",
                    help="a complete capture: <receiver root>/<capture id>")
    ap.add_argument("--cloud", default=os.environ.get("OS_CLOUD"),
                    help="cloud name in clouds.yaml (default: $OS_CLOUD)")
    ap.add_argument("--disk-format", choices=[f.value for f in DiskFormat], default=None,
                    help="qcow2, raw (Ceph RBD) or vmdk (VMware); default: what the cloud's Glance takes")
    ap.add_argument("--adapter", choices=[a.value for a in VmdkAdapter], default=None,
                    help="vmdk only: the controller Nova's VMware driver attaches the disks on "
                         "(vmware_adaptertype; default lsiLogic)")
    ap.add_argument("--wait", type=float, default=3600, metavar="SECONDS",
                    help="how long Glance may take to turn each image active (default 3600)")
    ap.add_argument("-v", "--verbose", action="store_true")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="coldclone-publish: %(name)s: %(message)s")
    if not args.cloud:
        print("coldclone-publish: error: no cloud: give --cloud NAME (a cloud in clouds.yaml) "
              "or set OS_CLOUD", file=sys.stderr)
        return EXIT_USAGE
    try:
        rec = publish(args.capture_dir, args.cloud, say=say, wait_seconds=args.wait,
                      disk_format=DiskFormat(args.disk_format) if args.disk_format else None,
                      adapter=VmdkAdapter(args.adapter) if args.adapter else None)
    except ColdcloneError as e:
        print(f"coldclone-publish: error: {e}", file=sys.stderr)
        return e.exit_code
    for img in sorted(rec.images, key=lambda i: i.position):
        say(f"{img.disk}: image {img.image_id}")
        for k, v in sorted(img.properties.items()):
            say(f"  {k} = {v}")
    for line in render_plan(rec):
        say(line)
    boot = rec.boot
    print(f"COLDCLONE-PUBLISH-OK image_id={boot.image_id if boot else '-'} cloud={rec.cloud} "
          f"images={len(rec.images)} disk_format={rec.disk_format} "
          f"reused={'yes' if all(i.reused for i in rec.images) else 'no'}"
          + (f" phase={rec.phase}" if rec.phase else "") + (f" sync={rec.sync}" if rec.test else ""), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
