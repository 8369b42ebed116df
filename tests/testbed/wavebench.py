"""`make bench`'s wave: four sources captured at once to two conversion servers behind one link.

The remote site is a network namespace joined to this host by one veth pair, shaped with tc tbf
in the direction the images travel (as the estimate benchmark's link); inside it, two sshds on
two addresses, each a conversion server set up by `coldclone-server init` (one agents' key). Four
loop disks, each a real server disk (GPT, /boot, swap, a root with files and deleted remnants),
are captured by four `coldclone capture` processes started together with both servers, so they
spread over them. Printed per run: the wall time from the start to the last verified capture,
the bytes on the wire, the aggregate throughput, and that as a share of the link:
  uncapped              what four agents make of the link together
  bwlimit each          every agent capped (a wave that must leave room on a WAN link)
  server caps           every server's sessions capped in total (coldclone-receive --bwlimit)
"""

from __future__ import annotations

import json
import os
import shutil
import time

from agent.runcmd import run
from agent.units import human_bytes as hb
from . import synthdisk
from .convserver import ConversionServer, remove_user
from .loop import LoopDevice
from .netns import VethNamespace
from .procs import Spooled

MiB = 1 << 20
NS, HOST_IF, NS_IF = "ccw-bench", "ccwbn0", "ccwbn1"
HOST_IP, SERVER_IPS = "10.231.9.1", ("10.231.9.2", "10.231.9.3")
USERS = ("ccw-bench-a", "ccw-bench-b")
SOURCES = 4


def _capture(dev: str, cid: str, servers: list[ConversionServer], *extra: str) -> Spooled:
    argv = [os.path.join(os.path.dirname(os.sys.executable), "coldclone"), "capture", "--disk", dev,
            "--identity", servers[0].init.identity, "--capture-id", cid, "--calibrate", "0",
            "--progress-interval", "3600", *extra]
    for s in servers:
        argv += ["--to", s.url(), "--hostkey", s.init.hostkey]
    return Spooled(argv)


def _one_run(name: str, devs: list[str], servers: list[ConversionServer], link_rate: float,
             *extra: str) -> dict:
    t0 = time.monotonic()
    procs = [_capture(dev, f"{name}-{i}", servers, *extra) for i, dev in enumerate(devs)]
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"wave run {name} failed ({p.returncode}): {(out + err)[-2000:]}")
    wall = time.monotonic() - t0
    wire, spread, starts, ends = 0, {}, [], []
    for i in range(len(devs)):
        cid = f"{name}-{i}"
        srv = next(s for s in servers if os.path.isdir(os.path.join(s.root, cid)))
        spread[srv.name] = spread.get(srv.name, 0) + 1
        path = os.path.join(srv.root, cid, "manifest.json")
        m = json.load(open(path))
        wire += m["totals"]["stream_bytes"]
        # the receiver's window: HELLO to manifest (the agents' discovery and estimate before it)
        ends.append(os.stat(path).st_mtime)
        starts.append(ends[-1] - m["receive_seconds"])
        shutil.rmtree(os.path.join(srv.root, cid))
    window = max(ends) - min(starts)
    return dict(name=name, wall=wall, window=window, wire=wire, rate=wire / window, share=wire / window / link_rate,
                spread=spread, note=" ".join(extra) or "no cap")


def wave_throughput(work: str, link_mbit: int, size_mb: int = 256) -> list[dict]:
    """The wave's runs over a link of link_mbit; rows of figures."""
    link_rate = link_mbit * 1e6 / 8
    link = VethNamespace(NS, HOST_IF, NS_IF, f"{HOST_IP}/29", f"{SERVER_IPS[0]}/29")
    servers: list[ConversionServer] = []
    loops: list[LoopDevice] = []
    rows = []
    for u in USERS:
        remove_user(u)
    try:
        link.up()
        run(["ip", "-n", NS, "addr", "add", f"{SERVER_IPS[1]}/29", "dev", NS_IF])
        run(["tc", "qdisc", "add", "dev", HOST_IF, "root", "tbf", "rate", f"{link_mbit}mbit", "burst", "256kb",
             "latency", "100ms"])
        for i, (user, ip) in enumerate(zip(USERS, SERVER_IPS)):
            s = ConversionServer(user, user, os.path.join(work, f"server-{i}"), ns=link, addr=ip)
            s.set_up(*(("--identity", servers[0].init.identity) if servers else ()))
            servers.append(s.start())
        for i in range(SOURCES):
            img = os.path.join(work, f"wave-src-{i}.img")
            synthdisk.build(img, size=size_mb * MiB, files_mb=size_mb // 8, remnant_mb=size_mb // 3)
            loops.append(LoopDevice(img).__enter__())
        devs = [lp.dev for lp in loops]
        each = max(1, link_mbit // 5)
        rows.append(_one_run("uncapped", devs, servers, link_rate))
        rows.append(_one_run("bwlimit-each", devs, servers, link_rate, "--bwlimit", f"{each}mbit"))
        # each server's sessions capped in total: init again with --bwlimit (the forced command changes)
        for s in servers:
            s.set_up("--bwlimit", f"{link_mbit // 4}mbit")
        rows.append(_one_run("server-caps", devs, servers, link_rate))
    finally:
        for s in servers:
            s.stop()
        for lp in loops:
            lp.__exit__(None, None, None)
        link.down()
        for u in USERS:
            remove_user(u)
    return rows


def report(rows: list[dict], link_mbit: int) -> None:
    print(f"\n== a wave: {SOURCES} sources at once to 2 conversion servers behind one {link_mbit} Mbit/s "
          f"tc tbf link")
    print("(wall: the agents started to the last one verified; receiving: the first HELLO to the last "
          "manifest, over which the aggregate is taken)")
    print(f"{'run':<14}{'wall s':>8}{'receiving s':>13}{'wire':>12}{'aggregate':>14}{'of the link':>13}  spread, caps")
    for r in rows:
        spread = ", ".join(f"{k} {v}" for k, v in sorted(r["spread"].items()))
        print(f"{r['name']:<14}{r['wall']:>8.1f}{r['window']:>13.1f}{hb(r['wire']):>12}{r['rate'] * 8 / 1e6:>9.1f} "
              f"Mbit/s{100 * r['share']:>12.0f}%  {spread}; {r['note']}")
