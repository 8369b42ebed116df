"""`make bench`: coldclone against the baselines a migration team uses today, in one run.

The same synthetic server disk, aged (issue 15's workload: 4 GiB GPT, /boot 256 MiB, swap
512 MiB, root ext4 with 1.5 GB of real files and 1 GiB of deleted random data in its free
space) is captured to the same sshd on 127.0.0.1 by:
  cc-used            coldclone capture --mode used (filesystem used blocks only -> verified qcow2)
  cc-nonzero         coldclone capture (zero-skip, zstd:1, digests, server-side verify -> qcow2)
  dd|ssh             dd bs=4M | ssh host 'cat > img'            (then qemu-img convert)
  dd|zstd|ssh        dd bs=4M | zstd -1 | ssh host 'cat > img.zst'  (then unzstd + qemu-img convert)
  resume             cc-nonzero with the receiver killed (-9) at ~50 %, then --resume: bytes received
                     twice and time vs uninterrupted (tests/testbed/resumebench.py; 127.0.0.1 only)
Printed per run: wall time of the transfer, time until a qcow2 exists on the
server, bytes on the wire, agent-side CPU seconds and peak RSS (the source
server's side: every process on the sending side); then coldclone's ratios.
The page cache is dropped before every run so each reads the disk cold.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from agent.units import human_bytes as hb
from agent.runcmd import run
from . import resumebench, synthdisk
from .loop import LoopDevice
from .netns import ShapedServer
from .sshd import Sshd

MiB = 1 << 20


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(argv_or_shell, shell=False) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of one run: the process and everything it waited for."""
    drop_caches()
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv_or_shell, shell=shell, stdout=subprocess.DEVNULL, stderr=err,
                             executable="/bin/bash" if shell else None)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"benchmark run failed ({p.returncode}): {argv_or_shell}\n"
                               f"{err.read()[-2000:].decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def run_methods(dev: str, sd, root: str, url: str, known_hosts: str, client_key: str, ssh: str) -> list[dict]:
    """Every method once, to the server behind `url` / `ssh`; rows of figures."""
    rows = []
    # coldclone: the whole job, ending with a verified qcow2 on the server. --calibrate 0: the
    # estimate's 3 s probe of the server is advice the baselines do not pay for (discovery and
    # the read-only inspection still run, as in every capture).
    cc = os.path.join(os.path.dirname(sys.executable), "coldclone")
    for mode, note in (("used", "used blocks+zstd:1, verified qcow2"),
                       ("nonzero", "zero-skip+zstd:1, verified qcow2")):
        wall, cpu, rss = timed([cc, "capture", "--disk", dev, "--to", url, "--identity", client_key,
                                "--known-hosts", known_hosts, "--capture-id", f"bench-{mode}", "--mode", mode,
                                "--progress-interval", "3600", "--calibrate", "0"])
        m = json.load(open(os.path.join(root, f"bench-{mode}", "manifest.json")))
        d = m["disks"][0]
        server_tail = sum(d["timings"].get(k, 0) for k in ("readback_seconds", "convert_seconds",
                                                            "compare_seconds"))
        rows.append(dict(name=f"cc-{mode}", transfer=wall - server_tail, to_qcow2=wall,
                         wire=m["totals"]["stream_bytes"], cpu=cpu, rss=rss, note=note,
                         read=d["agent"]["bytes_read"], map_s=d["agent"].get("map_seconds", 0.0)))
        shutil.rmtree(os.path.join(root, f"bench-{mode}"))

    # dd | ssh 'cat > img', then convert on the server.
    raw = os.path.join(root, "dd.img")
    wall, cpu, rss = timed(f"dd if={dev} bs=4M status=none | {ssh} 'cat > {raw}'", shell=True)
    t0 = time.monotonic()
    run(["qemu-img", "convert", "-O", "qcow2", raw, raw + ".qcow2"])
    conv = time.monotonic() - t0
    rows.append(dict(name="dd|ssh", transfer=wall, to_qcow2=wall + conv, wire=sd.size, cpu=cpu, rss=rss,
                     note="+ qemu-img convert, unverified"))
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, raw + ".qcow2"])
    os.unlink(raw)
    os.unlink(raw + ".qcow2")

    # dd | zstd -1 | ssh 'cat > img.zst', then decompress and convert.
    zst = os.path.join(root, "dd.img.zst")
    wall, cpu, rss = timed(f"dd if={dev} bs=4M status=none | zstd -1 -q -c | {ssh} 'cat > {zst}'", shell=True)
    wire = os.path.getsize(zst)
    t0 = time.monotonic()
    run(["zstd", "-d", "-q", "-f", "--sparse", zst, "-o", zst[:-4]])
    run(["qemu-img", "convert", "-O", "qcow2", zst[:-4], zst[:-4] + ".qcow2"])
    conv = time.monotonic() - t0
    rows.append(dict(name="dd|zstd|ssh", transfer=wall, to_qcow2=wall + conv, wire=wire, cpu=cpu, rss=rss,
                     note="+ unzstd + qemu-img convert, unverified"))
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", dev, zst[:-4] + ".qcow2"])
    for f in (zst, zst[:-4], zst[:-4] + ".qcow2"):
        os.unlink(f)
    return rows


def report(title: str, rows: list[dict], size: int, link_rate: float | None = None) -> None:
    print(f"\n== {title}")
    print(f"{'run':<13}{'transfer s':>11}{'to qcow2 s':>11}{'wire':>12}{'agent CPU s':>12}{'agent RSS':>11}  note")
    for r in rows:
        print(f"{r['name']:<13}{r['transfer']:>11.1f}{r['to_qcow2']:>11.1f}{hb(r['wire']):>12}{r['cpu']:>12.1f}"
              f"{hb(r['rss']):>11}  {r['note']}")
    for c in rows:
        if "read" in c:
            floor = f"; link floor {c['wire'] / link_rate:.1f} s, {c['to_qcow2'] / (c['wire'] / link_rate):.2f}x it" \
                if link_rate else ""
            print(f"{c['name']}: read {hb(c['read'])} of {hb(size)}, used map built in {c['map_s']:.1f} s{floor}")
    baselines = [r for r in rows if not r["name"].startswith("cc-")]
    for c in (r for r in rows if r["name"].startswith("cc-")):
        print(f"{c['name']} / baseline (lower is better for coldclone):")
        for r in baselines + [r for r in rows if r["name"].startswith("cc-") and r is not c]:
            print(f"  vs {r['name']:<12} transfer {c['transfer'] / r['transfer']:.2f}x  "
                  f"to-qcow2 {c['to_qcow2'] / r['to_qcow2']:.2f}x  wire {c['wire'] / r['wire']:.3f}x  "
                  f"agent CPU {c['cpu'] / max(r['cpu'], 1e-9):.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-bench")
    ap.add_argument("--size-mb", type=int, default=4096)
    ap.add_argument("--files-mb", type=int, default=1536)
    ap.add_argument("--remnant-mb", type=int, default=1024, help="deleted random data in root's free space")
    ap.add_argument("--swap-mb", type=int, default=512)
    ap.add_argument("--link-mbit", type=int, default=200,
                    help="also run every method over a veth link shaped to this rate (0: only 127.0.0.1)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("make bench needs root (loop devices, sshd, drop_caches)")
        return 2
    work = tempfile.mkdtemp(prefix="coldclone-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    results: dict[str, list[dict]] = {}
    try:
        img = os.path.join(work, "server.img")
        t = time.monotonic()
        sd = synthdisk.build(img, size=args.size_mb * MiB, files_mb=args.files_mb, remnant_mb=args.remnant_mb,
                             swap_mb=args.swap_mb)
        print(f"disk: {hb(sd.size)} GPT, {hb(sd.files_bytes)} real files, {hb(sd.remnant_bytes)} deleted "
              f"remnants (built in {time.monotonic() - t:.0f} s); {os.cpu_count()} CPUs", flush=True)
        with LoopDevice(img) as loop:
            root = os.path.join(work, "rx")
            with Sshd(receiver_root=root, workdir=os.path.join(work, "sshd"), baseline_key=True) as sshd:
                ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv())
                results["127.0.0.1"] = run_methods(loop.dev, sd, root, sshd.url, sshd.known_hosts,
                                                   sshd.client_key, ssh)
                resume = resumebench.resume_cost(loop.dev, root, sshd.url, sshd.known_hosts, sshd.client_key)
            report("sshd on 127.0.0.1", results["127.0.0.1"], sd.size)
            resumebench.report(resume)
            if args.link_mbit:
                root = os.path.join(work, "rx-shaped")
                with ShapedServer(args.link_mbit, receiver_root=root, workdir=os.path.join(work, "sshd-shaped"),
                                  baseline_key=True) as srv:
                    ssh = " ".join(shlex.quote(a) for a in srv.ssh_argv())
                    key = f"{args.link_mbit} Mbit/s"
                    results[key] = run_methods(loop.dev, sd, root, srv.url("/"), srv.sshd.known_hosts,
                                               srv.sshd.client_key, ssh)
                report(f"sshd in a network namespace behind a {args.link_mbit} Mbit/s tc tbf link", results[key],
                       sd.size, link_rate=args.link_mbit * 1e6 / 8)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"disk": {"size": sd.size, "files": sd.files_bytes, "remnants": sd.remnant_bytes},
                       "runs": results, "resume": resume}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
