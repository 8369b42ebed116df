"""`make bench`: coldclone against the baselines a migration team uses today, in one run.

The same synthetic server disk (a few GiB: real files, deleted remnants, free
space) is captured to the same sshd on 127.0.0.1 by:
  coldclone          coldclone capture (zero-skip, zstd:1, digests, server-side verify -> qcow2)
  dd|ssh             dd bs=4M | ssh host 'cat > img'            (then qemu-img convert)
  dd|zstd|ssh        dd bs=4M | zstd -1 | ssh host 'cat > img.zst'  (then unzstd + qemu-img convert)
Printed per run: wall time of the transfer, time until a qcow2 exists on the
server, bytes on the wire, and agent-side CPU seconds (the source server's
CPU: every process on the sending side); then coldclone's ratio to each.
The page cache is dropped before every run so each reads the disk cold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from agent.units import human_bytes as hb
from agent.runcmd import run
from . import synthdisk
from .loop import LoopDevice
from .sshd import Sshd

MiB = 1 << 20


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(argv_or_shell, shell=False) -> tuple[float, float, subprocess.CompletedProcess]:
    drop_caches()
    c0, t0 = children_cpu(), time.monotonic()
    p = subprocess.run(argv_or_shell, shell=shell, capture_output=True, text=True,
                       executable="/bin/bash" if shell else None)
    wall, cpu = time.monotonic() - t0, children_cpu() - c0
    if p.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({p.returncode}): {argv_or_shell}\n{p.stderr[-2000:]}")
    return wall, cpu, p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-bench")
    ap.add_argument("--size-mb", type=int, default=4096)
    ap.add_argument("--files-mb", type=int, default=700)
    ap.add_argument("--remnant-mb", type=int, default=256)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make bench needs root (loop devices, sshd, drop_caches)")
        return 2
    work = tempfile.mkdtemp(prefix="coldclone-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    rows = []
    try:
        img = os.path.join(work, "server.img")
        t = time.monotonic()
        sd = synthdisk.build(img, size=args.size_mb * MiB, files_mb=args.files_mb, remnant_mb=args.remnant_mb)
        print(f"disk: {hb(sd.size)} GPT, {hb(sd.files_bytes)} real files, {hb(sd.remnant_bytes)} deleted "
              f"remnants (built in {time.monotonic() - t:.0f} s); {os.cpu_count()} CPUs", flush=True)
        root = os.path.join(work, "rx")
        with LoopDevice(img) as loop, Sshd(receiver_root=root, workdir=os.path.join(work, "sshd"),
                                            baseline_key=True) as sshd:
            dev = loop.dev
            ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv())

            # coldclone: the whole job, ending with a verified qcow2 on the server.
            cc = os.path.join(os.path.dirname(sys.executable), "coldclone")
            wall, cpu, p = timed([cc, "capture", "--disk", dev, "--to", sshd.url, "--identity", sshd.client_key,
                                  "--known-hosts", sshd.known_hosts, "--capture-id", "bench",
                                  "--progress-interval", "3600"])
            m = json.load(open(os.path.join(root, "bench", "manifest.json")))
            d = m["disks"][0]
            server_tail = sum(d["timings"].get(k, 0) for k in ("readback_seconds", "convert_seconds", "compare_seconds"))
            rows.append(dict(name="coldclone", transfer=wall - server_tail, to_qcow2=wall,
                             wire=m["totals"]["stream_bytes"], cpu=cpu, note="zero-skip+zstd:1, verified qcow2"))

            # dd | ssh 'cat > img', then convert on the server.
            raw = os.path.join(root, "dd.img")
            wall, cpu, _ = timed(f"dd if={dev} bs=4M status=none | {ssh} 'cat > {raw}'", shell=True)
            t0 = time.monotonic()
            run(["qemu-img", "convert", "-O", "qcow2", raw, raw + ".qcow2"])
            conv = time.monotonic() - t0
            rows.append(dict(name="dd|ssh", transfer=wall, to_qcow2=wall + conv, wire=sd.size, cpu=cpu,
                             note="+ qemu-img convert, unverified"))
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, raw + ".qcow2"])
            os.unlink(raw)
            os.unlink(raw + ".qcow2")

            # dd | zstd -1 | ssh 'cat > img.zst', then decompress and convert.
            zst = os.path.join(root, "dd.img.zst")
            wall, cpu, _ = timed(f"dd if={dev} bs=4M status=none | zstd -1 -q -c | {ssh} 'cat > {zst}'", shell=True)
            wire = os.path.getsize(zst)
            t0 = time.monotonic()
            run(["zstd", "-d", "-q", "-f", "--sparse", zst, "-o", zst[:-4]])
            run(["qemu-img", "convert", "-O", "qcow2", zst[:-4], zst[:-4] + ".qcow2"])
            conv = time.monotonic() - t0
            rows.append(dict(name="dd|zstd|ssh", transfer=wall, to_qcow2=wall + conv, wire=wire, cpu=cpu,
                             note="+ unzstd + qemu-img convert, unverified"))
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, zst[:-4] + ".qcow2"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'run':<13}{'transfer s':>11}{'to qcow2 s':>11}{'wire':>12}{'agent CPU s':>12}  note")
    for r in rows:
        print(f"{r['name']:<13}{r['transfer']:>11.1f}{r['to_qcow2']:>11.1f}{hb(r['wire']):>12}{r['cpu']:>12.1f}  {r['note']}")
    c = rows[0]
    print("\ncoldclone / baseline (lower is better for coldclone):")
    for r in rows[1:]:
        print(f"  vs {r['name']:<12} transfer {c['transfer'] / r['transfer']:.2f}x  to-qcow2 {c['to_qcow2'] / r['to_qcow2']:.2f}x  "
              f"wire {c['wire'] / r['wire']:.3f}x  agent CPU {c['cpu'] / max(r['cpu'], 1e-9):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"disk": {"size": sd.size, "files": sd.files_bytes, "remnants": sd.remnant_bytes},
                       "runs": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
