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
from .bench import drop_caches
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
    out = [f"  {total} samples"]
    for name, n in by_thread.most_common(10):
        out.append(f"  thread {name:<50} {n:>7} {100 * n / max(total, 1):5.1f}%")
    for name, n in by_leaf.most_common(top):
        out.append(f"  {n:>7} {100 * n / max(total, 1):5.1f}%  {name[:150]}")
    return "\n".join(out)


def capture(dev: str, url: str, known_hosts: str, key: str, root: str, mode: str, out: str,
            pyspy: str | None, extra: list[str]) -> dict:
    cc = os.path.join(os.path.dirname(sys.executable), "coldclone")
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
                                       "--idle", "--rate", "200", "-o", os.path.join(out, f"{mode}.agent.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rpid = _find_receiver(root)
        if rpid:
            spies.append(subprocess.Popen([pyspy, "record", "--pid", str(rpid), "--format", "raw", "--threads",
                                           "--idle", "--rate", "200",
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
    ap.add_argument("extra", nargs="*", help="more `coldclone capture` arguments (after --)")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    os.chmod(args.work, 0o755)
    img = os.path.join(args.work, "server.img")
    if not os.path.exists(img):
        synthdisk.build(img, size=4096 * MiB, files_mb=1536, remnant_mb=1024, swap_mb=512)
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
        with srv:
            for _ in range(args.repeat):
                for mode in args.modes.split(","):
                    r = capture(loop.dev, url_of(), sshd.known_hosts, sshd.client_key, sshd.receiver_root, mode,
                                out, pyspy, args.extra)
                    print(json.dumps(r), flush=True)
                    for end in ("agent", "receiver"):
                        f = os.path.join(out, f"{mode}.{end}.txt")
                        if pyspy and os.path.exists(f):
                            print(f"-- {mode} {end}\n{summarize(f)}", flush=True)
                            os.rename(f, f + ".last")
    return 0


if __name__ == "__main__":
    sys.exit(main())
