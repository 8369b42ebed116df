"""`make demo`: a synthetic source server captured end to end to a local conversion server.

Builds a 2 GiB server disk (GPT: /boot ext4, swap, root ext4 with a few
hundred MB of real files and deleted-file remnants) on a loop device, starts
a throwaway sshd on 127.0.0.1 whose key runs coldclone-receive as a forced
command, estimates, captures with the real `coldclone capture`, verifies the
qcow2 against the source with qemu-img compare, and cleans up (the qcow2 and
its manifest stay, and their path is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from agent.units import human_bytes as hb
from agent.runcmd import run
from . import synthdisk
from .files import sha256_of as sha256
from .loop import LoopDevice
from .sshd import Sshd

MiB = 1 << 20



def say(text: str = "") -> None:
    print(text, flush=True)


def add_source_args(ap: argparse.ArgumentParser, size_mb: int, files_mb: int, remnant_mb: int,
                    out: str) -> None:
    """The synthetic server's shape and where the images stay: the same for both demos."""
    ap.add_argument("--size-mb", type=int, default=size_mb)
    ap.add_argument("--files-mb", type=int, default=files_mb)
    ap.add_argument("--remnant-mb", type=int, default=remnant_mb)
    ap.add_argument("--table", choices=["gpt", "msdos"], default="gpt")
    ap.add_argument("--out", default=out, help="where the captured images stay")


def workspace(out: str, prefix: str) -> tuple[str, str]:
    """(scratch dir, receiver root under out). Both world-traversable: the receiver runs as
    the throwaway sshd's user, not root. The caller removes the scratch dir."""
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o755)
    work = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(work, 0o755)
    receiver_root = os.path.join(out, "captures")
    os.makedirs(receiver_root, exist_ok=True)
    return work, receiver_root


def say_where(qcow2: str, capture_dir: str) -> None:
    """The demos' last words: the verified image, its manifest, and how to remove them."""
    say(f"verified qcow2: {qcow2} ({hb(os.path.getsize(qcow2))}), manifest: "
        f"{os.path.join(capture_dir, 'manifest.json')}")
    say(f"(remove with: rm -rf {capture_dir})")


def describe_source(sd: synthdisk.SynthDisk, built_in: float) -> str:
    return (f"source disk: {hb(sd.size)} {sd.table.upper()}: /boot ext4, swap, / ext4 with "
            f"{hb(sd.files_bytes)} of real files and {hb(sd.remnant_bytes)} of deleted-file remnants "
            f"(built in {built_in:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-demo")
    add_source_args(ap, size_mb=2048, files_mb=300, remnant_mb=64, out="/var/tmp/coldclone-demo")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        say("make demo needs root (loop devices, a throwaway sshd): run it as root")
        return 2
    work, receiver_root = workspace(args.out, "coldclone-demo-")
    try:
        say("== coldclone demo: a synthetic source server, captured to a local conversion server ==")
        t = time.monotonic()
        img = os.path.join(work, "source-server.img")
        sd = synthdisk.build(img, size=args.size_mb * MiB, table=args.table, files_mb=args.files_mb,
                             remnant_mb=args.remnant_mb)
        say(describe_source(sd, time.monotonic() - t))
        with LoopDevice(img) as loop, Sshd(receiver_root=receiver_root, workdir=os.path.join(work, "sshd")) as sshd:
            say(f"source server disk attached as {loop.dev}; conversion server: sshd on 127.0.0.1:{sshd.port}, "
                f"key forced to `coldclone-receive --root {receiver_root}`, host key {sshd.fingerprint}")
            before = sha256(loop.dev)
            # coldclone capture runs the one capture job: discovery, read-only inspection (the
            # readiness report), the estimate with 3 s of calibration against this server, then
            # the capture; it prints each, and the manifest keeps predicted vs actual.
            say("\n-- capture (coldclone capture: inventory, readiness, estimate, capture) --")
            capture_id = "demo-" + time.strftime("%Y%m%dT%H%M%S")
            argv = [os.path.join(os.path.dirname(sys.executable), "coldclone"), "capture", "--disk", loop.dev,
                    "--to", sshd.url, "--identity", sshd.client_key, "--hostkey", sshd.fingerprint,
                    "--capture-id", capture_id, "--progress-interval", "2"]
            say("$ " + " ".join(argv))
            t = time.monotonic()
            rc = subprocess.call(argv)
            took = time.monotonic() - t
            if rc != 0:
                say(f"capture failed with exit code {rc}")
                return rc
            cap = os.path.join(receiver_root, capture_id)
            m = json.load(open(os.path.join(cap, "manifest.json")))
            disk = m["disks"][0]
            qcow2 = os.path.join(cap, disk["image"])
            say("\n-- verification (independent of the receiver's own checks) --")
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", loop.dev, qcow2])
            say(f"qemu-img compare {loop.dev} {qcow2}: images are identical")
            after = sha256(loop.dev)
            assert after == before, "source changed!"
            say(f"source sha256 before and after: {before[:16]}... (unchanged)")
            rec = disk["received"]
            say("\n-- figures --")
            vs = m["estimate_vs_actual"]
            capture_s = vs["actual_seconds"]
            say(f"estimate: {vs['predicted_seconds']:.1f} s, ~{hb(m['estimate']['bytes_to_send'])} to send; "
                f"actual capture: {capture_s:.1f} s, {hb(m['totals']['stream_bytes'])} on the wire "
                f"({took:.1f} s for the whole command, discovery, inspection and calibration included)")
            say(f"throughput: {sd.size / capture_s / 1e6:.0f} MB/s of disk captured "
                f"({rec['data_bytes'] / capture_s / 1e6:.0f} MB/s of non-zero data)")
            say(f"on the wire: {hb(m['totals']['stream_bytes'])} = {100 * m['totals']['stream_bytes'] / sd.size:.1f}% "
                f"of the disk; {hb(rec['zero_bytes'])} of zero blocks never sent")
            say_where(qcow2, cap)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
