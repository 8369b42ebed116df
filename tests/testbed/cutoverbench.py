"""`make bench`'s cutover rows (issue 22): a warm capture's cutover against a cold capture.

The bench's aged disk is synced warm by the real sync file (`coldclone-server sync-file`, run
with the system python3 as on a source server) through the testbed's sshd and receiver, once to a
server on 127.0.0.1 and once to one behind the shaped link. Then files of its root filesystem
holding 5 % of the bytes the used map reads are overwritten in place with new random data (the
files' own blocks: no truncation, no new allocation), and at each link, on that same disk state:
  cutover   coldclone capture --disk DEV --resume ID --mode used  (the ISO's cutover path)
  cold      coldclone capture --disk DEV --mode used, a new capture id
each timed to its verified image (the command's wall time: it ends at the COMPLETE reply).
The floor printed beside them: the disk's used extents read with os.pread after dropping the page
cache (the cutover reads every block a cold capture reads, to compare it).
Run alone: `make bench BENCH_ARGS=--cutover-only`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import time

from agent import protocol as P
from agent.runcmd import run
from agent.source.capture.usedmap import plan_disk
from agent.units import human_bytes as hb
from .benchtime import drop_caches, timed
from .loop import mounted_rw, partitions
from .netns import ShapedServer
from .sshd import Sshd

MiB = 1 << 20
SHARE = 0.05            # of the used bytes, rewritten after the warm sync
SEED = 22
# Issue 22's goal: the cutover's time to a verified image at most this share of a cold mode=used
# capture's, at this link (the rows' key).
GOAL_LINK_MBIT = 200
GOAL = 0.2
# The sync file runs under the system's own python3, as on a source server (not the bench's venv).
PYTHON3 = "/usr/bin/python3"


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def used_bytes(dev: str) -> int:
    """What mode=used reads of the disk: the used map's sent extents (block aligned)."""
    return plan_disk(dev, _size(dev), P.DEFAULT_BLOCK_SIZE).read_bytes


def _size(dev: str) -> int:
    return int(run(["blockdev", "--getsize64", dev]).stdout)


def read_floor(dev: str) -> dict:
    """The disk's used extents read cold with os.pread in 4 MiB requests: bytes, seconds."""
    umap = plan_disk(dev, _size(dev), P.DEFAULT_BLOCK_SIZE)
    drop_caches()
    fd = os.open(dev, os.O_RDONLY)
    t0 = time.monotonic()
    try:
        for e in (e for e in umap.extents if e.sent):
            for off in range(e.offset, e.end, 4 * MiB):
                os.pread(fd, min(4 * MiB, e.end - off), off)
    finally:
        os.close(fd)
    return dict(bytes=umap.read_bytes, seconds=time.monotonic() - t0)


def rewrite_used(dev: str, used: int, share: float = SHARE, seed: int = SEED) -> dict:
    """Overwrite, in place, files of the disk's root filesystem (its last partition) holding
    `share` of `used` bytes: the files in a shuffled order (seeded), each whole, the last one
    only its first bytes up to the budget; new random data written over the file's own blocks
    (open r+b: no truncation, as dd conv=notrunc), fsynced, then unmounted."""
    budget = int(used * share)
    root = partitions(dev)[-1]
    done, files, partial = 0, [], None
    with mounted_rw(root) as mnt:
        paths = []
        for dirpath, dirnames, filenames in os.walk(mnt):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if not os.path.islink(p) and os.path.isfile(p) and os.path.getsize(p) > 0:
                    paths.append(p)
        random.Random(seed).shuffle(paths)
        for p in paths:
            if done >= budget:
                break
            size = os.path.getsize(p)
            n = min(size, budget - done)
            with open(p, "r+b") as f:
                for off in range(0, n, 4 * MiB):
                    f.write(os.urandom(min(4 * MiB, n - off)))
                f.flush()
                os.fsync(f.fileno())
            done += n
            files.append(size)
            if n < size:
                partial = (os.path.relpath(p, mnt), n, size)
    return dict(budget=budget, bytes=done, files=len(files), largest=max(files, default=0), used=used,
                partial=partial, fs=os.path.basename(root))


def sync_file(work: str) -> str:
    """The self-contained sync file as the conversion server serves it."""
    path = os.path.join(work, "coldclone-sync")
    run([_bin("coldclone-server"), "sync-file", "--output", path])
    return path


def warm_sync(sync: str, dev: str, url: str, client_key: str, fingerprint: str, root: str) -> dict:
    """`/usr/bin/python3 coldclone sync` of the disk into the server behind url: its capture id and figures."""
    t0 = time.monotonic()
    p = run([PYTHON3, sync, "sync", "--disk", dev, "--to", url, "--identity", client_key,
             "--hostkey", fingerprint], timeout=3600)
    wall = time.monotonic() - t0
    cid = re.search(r"^capture_id=(\S+)$", p.stdout, re.M).group(1)
    m = json.load(open(os.path.join(root, cid, "manifest.json")))
    assert m["phase"] == "warm", m.get("phase")
    s = m["syncs"][-1]
    return dict(capture_id=cid, wall=wall, bytes_read=s["bytes_read"], bytes_sent=s["bytes_sent"])


def _capture(dev: str, url: str, known_hosts: str, client_key: str, *args: str) -> tuple[float, float, int, float]:
    return timed([_bin("coldclone"), "capture", "--disk", dev, "--to", url, "--identity", client_key,
                  "--known-hosts", known_hosts, "--mode", "used", "--progress-interval", "3600",
                  "--calibrate", "0", *args])


def _figures(run: tuple[float, float, int, float], d: dict) -> dict:
    """A capture's wall time and CPU (benchtime.timed) with its manifest disk entry's agent and receiver
    figures."""
    wall, cpu, rss, busy = run
    a = d["agent"]
    return dict(wall=wall, cpu=cpu, rss=rss, busy=busy, bytes_read=a["bytes_read"],
                read_seconds=a.get("read_seconds") or 0.0, map_seconds=a.get("map_seconds") or 0.0,
                stream=a.get("elapsed") or 0.0, tail=d["timings"].get("finish_seconds", 0.0), timings=d["timings"])


def cutover_vs_cold(dev: str, root: str, url: str, known_hosts: str, client_key: str, warm_id: str) -> dict:
    """The cutover of the warm capture, then a cold mode=used capture of the same disk: figures."""
    t = _capture(dev, url, known_hosts, client_key, "--resume", warm_id)
    m = json.load(open(os.path.join(root, warm_id, "manifest.json")))
    d = m["disks"][0]
    assert m["phase"] == "cutover" and all(d["verified"].values()), (m.get("phase"), d["verified"])
    cut = dict(_figures(t, d), **d["cutover"], same_bytes=d["received"]["same_bytes"])
    cut_digest, cut_image = d["digest"], os.path.join(root, warm_id, d["image"])

    cid = "bench-cold-used"
    t = _capture(dev, url, known_hosts, client_key, "--capture-id", cid, "--resume", "off")
    m = json.load(open(os.path.join(root, cid, "manifest.json")))
    d = m["disks"][0]
    # the cutover's image is what a cold capture of the disk gives, byte for byte (outside the timing;
    # mode=used leaves free space out, so the disk itself differs from both there)
    assert d["digest"] == cut_digest, "the cutover's whole-disk digest is not the cold capture's"
    run(["qemu-img", "compare", "-q", cut_image, os.path.join(root, cid, d["image"])], timeout=3600)
    cold = dict(_figures(t, d), wire=m["totals"]["stream_bytes"])
    shutil.rmtree(os.path.join(root, cid))
    shutil.rmtree(os.path.join(root, warm_id))
    return dict(cutover=cut, cold=cold)


def cutover_rows(dev: str, work: str, link_mbit: int) -> dict:
    """Warm syncs at each link, the 5 % rewrite, then the cutover and the cold capture at each link."""
    sync = sync_file(work)
    links = ["127.0.0.1"] + ([f"{link_mbit} Mbit/s"] if link_mbit else [])
    out: dict = {"python3": f"{PYTHON3} ({run([PYTHON3, '--version']).stdout.strip()})", "links": {}}
    with Sshd(receiver_root=os.path.join(work, "rx-cut"), workdir=os.path.join(work, "sshd-cut")) as lo:
        servers = {"127.0.0.1": (os.path.join(work, "rx-cut"), lo.url, lo.known_hosts, lo.client_key,
                                 lo.fingerprint)}
        shaped = ShapedServer(link_mbit, receiver_root=os.path.join(work, "rx-cut-shaped"),
                              workdir=os.path.join(work, "sshd-cut-shaped")) if link_mbit else None
        try:
            if shaped:
                shaped.start()
                servers[links[1]] = (os.path.join(work, "rx-cut-shaped"), shaped.url("/"), shaped.sshd.known_hosts,
                                     shaped.sshd.client_key, shaped.sshd.fingerprint)
            warm = {k: warm_sync(sync, dev, url, key, fp, root)
                    for k, (root, url, _kh, key, fp) in servers.items()}
            out["rewrite"] = rewrite_used(dev, used_bytes(dev))
            for k, (root, url, kh, key, _fp) in servers.items():
                floor = read_floor(dev)
                out["links"][k] = dict(warm=warm[k], floor=floor,
                                       **cutover_vs_cold(dev, root, url, kh, key, warm[k]["capture_id"]))
        finally:
            if shaped:
                shaped.stop()
    return out


def goals(r: dict) -> list[str]:
    """The goal line: the cutover's time to a verified image over the cold capture's, at the goal's
    link (none when the run had no such link)."""
    link_mbit = GOAL_LINK_MBIT
    row = r["links"].get(f"{link_mbit} Mbit/s")
    if row is None:
        return []
    ratio = row["cutover"]["wall"] / row["cold"]["wall"]
    floor = row["floor"]["seconds"] / row["cold"]["wall"]
    return [f"goal cutover <= {GOAL:.2f}x cold mode=used at {link_mbit} Mbit/s: {ratio:.2f}x  "
            f"{'met' if ratio <= GOAL else 'MISSED'}  (its read floor {row['floor']['seconds']:.1f} s is "
            f"{floor:.2f}x)"]


def report(r: dict) -> None:
    w = r["rewrite"]
    print(f"\n== cutover of a warm capture vs a cold mode=used capture (issue 22)")
    part = (f"; the last, /{w['partial'][0]}, only its first {hb(w['partial'][1])} of {hb(w['partial'][2])}"
            if w["partial"] else "")
    print(f"after the warm sync: {w['files']} files of the root filesystem ({w['fs']}), picked in a seeded "
          f"shuffle, overwritten in place with new random data (no truncation, fsynced): {hb(w['bytes'])} = "
          f"{w['bytes'] / w['used']:.1%} of the {hb(w['used'])} the used map reads (largest file "
          f"{hb(w['largest'])}{part})")
    print(f"{'link':<14}{'sync s':>8}{'sync sent':>11}{'cutover s':>11}{'cold s':>9}{'ratio':>7}"
          f"{'floor s':>9}{'cut sent':>11}{'segments':>10}{'same':>11}{'cold wire':>11}")
    for k, x in r["links"].items():
        c, o, f = x["cutover"], x["cold"], x["floor"]
        print(f"{k:<14}{x['warm']['wall']:>8.1f}{hb(x['warm']['bytes_sent']):>11}{c['wall']:>11.1f}"
              f"{o['wall']:>9.1f}{c['wall'] / o['wall']:>7.2f}{f['seconds']:>9.1f}{hb(c['bytes_sent']):>11}"
              f"{c['segments_sent']:>10}{hb(c['same_bytes']):>11}{hb(o['wire']):>11}")
    print(f"warm syncs: the sync file under {r['python3']}, first sync of the disk (every used block)")
    for k, x in r["links"].items():
        c, o, f = x["cutover"], x["cold"], x["floor"]
        print(f"{k}: floor: the used blocks ({hb(f['bytes'])}) read at the disk's rate, "
              f"{f['bytes'] / max(f['seconds'], 1e-9) / 1e6:.0f} MB/s, os.pread after dropping the page cache: "
              f"{f['seconds']:.1f} s (the cold capture's agent read_seconds {o['read_seconds']:.1f} s)")
        for name, y in (("cutover", c), ("cold", o)):
            t = y["timings"]
            print(f"{k}: {name} {y['wall']:.1f} s = before the disk's stream (start, discovery, inspection, "
                  f"estimate and used map, ssh, HELLO{', held map' if name == 'cutover' else ''}) "
                  f"{y['wall'] - y['stream'] - y['tail']:.1f} + the disk's stream {y['stream']:.1f} (reading "
                  f"{y['read_seconds']:.1f}, used map {y['map_seconds']:.1f}) + the receiver's END to verified "
                  f"{y['tail']:.1f} (read-back {t.get('readback_seconds', 0.0):.1f}, qemu-img check "
                  f"{t.get('check_seconds', 0.0):.1f}); agent CPU {y['cpu']:.1f} s, RSS {hb(y['rss'])}, receiver CPU "
                  f"{t.get('cpu_seconds', 0.0):.1f} s, machine CPU {y['busy']:.1f} s")
    for line in goals(r):
        print(line)
