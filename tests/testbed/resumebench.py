"""`make bench`'s resume line: what an interruption at ~50 % costs with `--resume`.

One uninterrupted capture, then the same capture with the receiver killed (-9, with its sshd
session) once half of the disk's data has arrived, then `coldclone capture --resume`: re-sent
bytes (received twice) and the total time of both attempts against the uninterrupted run.
Standalone: `python -m tests.testbed.resumebench --size-mb 1024` (root).
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
from . import synthdisk
from .loop import LoopDevice
from .procs import kill_receivers
from .resume import image_bytes, wait_image
from .sshd import Sshd

MiB = 1 << 20


def resume_cost(dev: str, root: str, url: str, known_hosts: str, client_key: str) -> dict:
    """Figures of one uninterrupted capture and one interrupted at ~50 % then resumed."""
    cc = os.path.join(os.path.dirname(sys.executable), "coldclone")
    base = [cc, "capture", "--disk", dev, "--to", url, "--identity", client_key, "--known-hosts", known_hosts,
            "--progress-interval", "3600", "--calibrate", "0"]

    t0 = time.monotonic()
    subprocess.run(base + ["--capture-id", "bench-whole"], check=True, capture_output=True)
    whole_s = time.monotonic() - t0
    entry = json.load(open(os.path.join(root, "bench-whole", "manifest.json")))["disks"][0]
    data = entry["received"]["data_bytes"]
    shutil.rmtree(os.path.join(root, "bench-whole"))

    t0 = time.monotonic()
    p = subprocess.Popen(base + ["--capture-id", "bench-cut", "--reconnect", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_image(p, root, "bench-cut", data // 2, timeout=3600)
    kill_receivers(root)
    p.wait(120)
    first_s = time.monotonic() - t0
    arrived = image_bytes(root, "bench-cut")

    t0 = time.monotonic()
    subprocess.run(base + ["--resume", "bench-cut"], check=True, capture_output=True)
    second_s = time.monotonic() - t0
    entry = json.load(open(os.path.join(root, "bench-cut", "manifest.json")))["disks"][0]
    shutil.rmtree(os.path.join(root, "bench-cut"))
    again = entry["received"]["data_bytes"]
    return dict(data=data, whole_s=whole_s, arrived=arrived, held=entry["resume"]["resumed_from"],
                sent_again=again, twice=max(0, arrived + again - data), first_s=first_s, second_s=second_s)


def report(r: dict) -> None:
    total = r["first_s"] + r["second_s"]
    print(f"resume after a receiver kill -9 at {r['arrived'] / r['data']:.0%} of {hb(r['data'])} of data: "
          f"{hb(r['twice'])} received twice ({r['twice'] / r['data']:.1%}), {hb(r['held'])} held; "
          f"{r['first_s']:.1f} s + {r['second_s']:.1f} s = {total:.1f} s vs {r['whole_s']:.1f} s uninterrupted "
          f"({total / r['whole_s']:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-resumebench")
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files-mb", type=int, default=384)
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="coldclone-resumebench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    try:
        img = os.path.join(work, "server.img")
        synthdisk.build(img, size=args.size_mb * MiB, files_mb=args.files_mb, remnant_mb=args.files_mb // 2,
                        swap_mb=64)
        with LoopDevice(img) as loop:
            root = os.path.join(work, "rx")
            with Sshd(receiver_root=root, workdir=os.path.join(work, "sshd")) as sshd:
                report(resume_cost(loop.dev, root, sshd.url, sshd.known_hosts, sshd.client_key))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
