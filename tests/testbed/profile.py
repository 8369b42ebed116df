"""`python -m tests.testbed.profile`: where a coldclone capture's seconds go, agent and receiver.

Builds (once, kept under --work) the bench's aged workload, then runs `coldclone capture` to the
testbed sshd on 127.0.0.1 (optionally behind a shaped link) with py-spy sampling both ends as
they run together: the agent from its start, the receiver from the moment sshd starts it. Prints
each end's samples per thread and per leaf function, plus the receiver's own timings from the
manifest. py-spy comes from PyPI (`pip install py-spy`); without it only the timings are shown.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time

from . import synthdisk
from .benchtime import drop_caches
from .loop import LoopDevice
from .netns import ShapedServer
from .sshd import Sshd

MiB = 1 << 20


def _find_receiver(root: str, timeout: float = 20.0) -> int | None:
    """The pid of the coldclone-receive that sshd started for this root (its argv names it)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if any(b"receive" in a for a in argv[:3]) and root.encode() in argv and b"python" in argv[0]:
                return int(pid)
        time.sleep(0.02)
    return None


# Stages of a capture, told apart by a function on the sampled stack (first match wins; each
# pattern is "function" or "function@file:line" as py-spy prints frames).
STAGES = (
    ("startup: imports", ("_find_and_load",)),
    ("discovery", ("CaptureJob._discover",)),
    ("inspection", ("CaptureJob._inspect",)),
    ("estimate (incl. used map)", ("CaptureJob._estimate",)),
    ("used map (partclone)", ("plan_disk", "_plan_disk")),
    ("receiver: readback digest", ("digest_file",)),
    ("receiver: qemu-img convert", ("convert_to_qcow2",)),
    ("receiver: qemu-img compare", ("compare",)),
    ("agent: read (pread)", ("read_extent",)),
    ("zero-detect + sha256", ("split_extents",)),
    ("agent: zstd compress", ("_Codec.compress",)),
    ("receiver: zstd decompress", ("_Sink._payload",)),
    ("receiver: sha256", ("block_digests",)),
    ("receiver: write", ("_Sink.extent",)),
    ("receiver: stdin read", ("Reader.read", "Prefetch._run")),
    ("agent: ssh (paramiko send)", ("Channel.sendall", "Channel.send")),
    ("agent: ssh (paramiko transport thread)", ("Transport.run",)),
    ("waiting for the receiver's verdict", ("_Replies.wait_for",)),
)


def stages(path: str) -> dict[str, float]:
    """Seconds (samples / rate) per stage of one py-spy raw profile."""
    out: collections.Counter = collections.Counter()
    for line in open(path):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        names = [f.split(" (")[0] for f in stack.split(";")]
        for stage, funcs in STAGES:
            if any(f in names for f in funcs):
                out[stage] += int(n) / RATE
                break
        else:
            out["other"] += int(n) / RATE
    return dict(out.most_common())


RATE = 200


def summarize(path: str, top: int = 25) -> str:
    """py-spy raw (collapsed) stacks -> samples per thread and per leaf function."""
    by_thread: collections.Counter = collections.Counter()
    by_leaf: collections.Counter = collections.Counter()
    total = 0
    for line in open(path):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        frames = stack.split(";")
        n = int(n)
        total += n
        thread = next((f for f in frames if f.startswith("thread")), frames[0])
        by_thread[thread.split(" ")[0] + " " + thread.split(" ")[-1] if " " in thread else thread] += n
        leaf = frames[-1]
        by_leaf[leaf] += n
    out = [f"  {total} samples ({total / RATE:.1f} s)"]
    for stage, sec in stages(path).items():
        out.append(f"  stage {stage:<42} {sec:7.1f} s")
    for name, n in by_thread.most_common(10):
        out.append(f"  thread {name:<50} {n:>7} {100 * n / max(total, 1):5.1f}%")
    for name, n in by_leaf.most_common(top):
        out.append(f"  {n:>7} {100 * n / max(total, 1):5.1f}%  {name[:150]}")
    return "\n".join(out)


def capture(dev: str, url: str, known_hosts: str, key: str, root: str, mode: str, out: str,
            pyspy: str | None, extra: list[str], bin_dir: str, idle: bool = False) -> dict:
    cc = os.path.join(bin_dir, "coldclone")
    cid = f"prof-{mode}"
    drop_caches()
    t0 = time.monotonic()
    p = subprocess.Popen([cc, "capture", "--disk", dev, "--to", url, "--identity", key, "--known-hosts",
                          known_hosts, "--capture-id", cid, "--mode", mode, "--progress-interval", "3600",
                          "--calibrate", "0", *extra], stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(out, f"{mode}.agent.log"), "w"))
    spies = []
    if pyspy:
        spies.append(subprocess.Popen([pyspy, "record", "--pid", str(p.pid), "--format", "raw", "--threads",
                                       *(["--idle"] if idle else []), "--rate", str(RATE),
                                       "-o", os.path.join(out, f"{mode}.agent.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rpid = _find_receiver(root)
        if rpid:
            spies.append(subprocess.Popen([pyspy, "record", "--pid", str(rpid), "--format", "raw", "--threads",
                                           *(["--idle"] if idle else []), "--rate", str(RATE),
                                           "-o", os.path.join(out, f"{mode}.receiver.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    for s in spies:
        s.wait(60)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"capture failed, see {out}/{mode}.agent.log")
    m = json.load(open(os.path.join(root, cid, "manifest.json")))
    shutil.rmtree(os.path.join(root, cid))
    d = m["disks"][0]
    return dict(mode=mode, wall=round(wall, 2), cpu=round(ru.ru_utime + ru.ru_stime, 2),
                rss_mb=ru.ru_maxrss // 1024, wire=m["totals"]["stream_bytes"], timings=d["timings"],
                agent={k: d["agent"].get(k) for k in ("bytes_read", "read_seconds", "map_seconds", "elapsed")})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-profile")
    ap.add_argument("--work", default="/var/tmp/coldclone-profile")
    ap.add_argument("--modes", default="used,nonzero")
    ap.add_argument("--link-mbit", type=int, default=0, help="0: sshd on 127.0.0.1")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument("--idle", action="store_true",
                    help="also sample waiting threads (where each end waits), not only running ones")
    ap.add_argument("--bin", default=os.path.dirname(sys.executable),
                    help="directory of the coldclone and coldclone-receive to run (another build: before/after)")
    ap.add_argument("extra", nargs="*", help="more `coldclone capture` arguments (after --)")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    os.chmod(args.work, 0o755)
    img = os.path.join(args.work, "server.img")
    if not os.path.exists(img):
        # built under another name and renamed when whole: an interrupted build is not reused
        synthdisk.build(img + ".building", size=4096 * MiB, files_mb=1536, remnant_mb=1024, swap_mb=512)
        os.rename(img + ".building", img)
    pyspy = None if args.no_pyspy else shutil.which("py-spy") or (
        os.path.join(os.path.dirname(sys.executable), "py-spy"))
    if pyspy and not os.path.exists(pyspy):
        pyspy = None
    out = os.path.join(args.work, "out")
    os.makedirs(out, exist_ok=True)
    with LoopDevice(img) as loop:
        if args.link_mbit:
            srv = ShapedServer(args.link_mbit, receiver_root=os.path.join(args.work, "rx"),
                               workdir=os.path.join(args.work, "sshd"))
            url_of, sshd = (lambda: srv.url("/")), srv.sshd
        else:
            srv = sshd = Sshd(receiver_root=os.path.join(args.work, "rx"), workdir=os.path.join(args.work, "sshd"))
            url_of = lambda: sshd.url  # noqa: E731
        sshd.receiver = os.path.join(args.bin, "coldclone-receive")
        with srv:
            for _ in range(args.repeat):
                for mode in args.modes.split(","):
                    r = capture(loop.dev, url_of(), sshd.known_hosts, sshd.client_key, sshd.receiver_root, mode,
                                out, pyspy, args.extra, args.bin, args.idle)
                    r["bin"] = args.bin
                    print(json.dumps(r), flush=True)
                    for end in ("agent", "receiver"):
                        f = os.path.join(out, f"{mode}.{end}.txt")
                        if pyspy and os.path.exists(f):
                            print(f"-- {mode} {end}\n{summarize(f)}", flush=True)
                            os.rename(f, f + ".last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
