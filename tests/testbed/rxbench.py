"""`python -m tests.testbed.rxbench`: the receiver alone, on one recorded stream, build against build.

The agent's own stream_disk records a nonzero stream of the profile workload (the image
tests.testbed.profile builds under /var/tmp/coldclone-profile) into a file once; then each
`coldclone-receive` given with --bin reads it through a pipe (as from sshd), caches dropped
before each run. Printed per run: wall, CPU seconds (the receiver and the qemu-img it waited
for), peak RSS and the manifest's timings. CPU seconds hold up on a shared machine where wall
times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from agent import protocol as P
from agent.source.capture.source import SourceDisk
from agent.source.capture.stream import StreamOptions, stream_disk
from .benchtime import drop_caches


def record(image: str, stream: str) -> None:
    size = os.path.getsize(image)
    with open(stream + ".tmp", "wb") as f:
        w = P.StreamWriter(f.write)
        w.hello(P.Hello(capture_id="rxb", format="qcow2", agent_version="rxbench", disks=("sda",)))
        w.disk(P.DiskHeader(name="sda", size=size, block_size=P.DEFAULT_BLOCK_SIZE, mode="nonzero"))
        digest, st = stream_disk(SourceDisk(image, "sda", "sda", size, 512, 512), f.write, StreamOptions())
        w.end(P.DiskEnd(digest, bytes_read=st.bytes_read))
        w.finish()
    os.rename(stream + ".tmp", stream)


def receive(bin_dir: str, stream: str, root: str) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    drop_caches()
    t0 = time.monotonic()
    cat = subprocess.Popen(["cat", stream], stdout=subprocess.PIPE)
    p = subprocess.Popen([os.path.join(bin_dir, "coldclone-receive"), "--root", root], stdin=cat.stdout,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    cat.stdout.close()
    p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    cat.wait()
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{bin_dir}/coldclone-receive failed on {stream}")
    m = json.load(open(os.path.join(root, "rxb", "manifest.json")))
    shutil.rmtree(root, ignore_errors=True)
    return dict(bin=bin_dir, wall=round(wall, 2), cpu=round(ru.ru_utime + ru.ru_stime, 2),
                rss_mb=ru.ru_maxrss // 1024, timings=m["disks"][0]["timings"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-rxbench")
    ap.add_argument("--image", default="/var/tmp/coldclone-profile/server.img")
    ap.add_argument("--stream", default="/var/tmp/coldclone-rxbench.stream")
    ap.add_argument("--bin", action="append", help="a directory with coldclone-receive (repeatable; "
                                                   "default: this venv's)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    if not os.path.exists(args.stream):
        record(args.image, args.stream)
    for _ in range(args.repeat):
        for b in args.bin or [os.path.dirname(sys.executable)]:
            print(json.dumps(receive(b, args.stream, args.stream + ".root")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
