"""A migration wave (issue 23), all real: two conversion servers, four sources at once, one server
lost mid-wave, one page watching it.

The servers: two OpenSSH sshds, each in a network namespace of its own (its own address on a veth,
a second and a third machine, joined by a site link of their own), each with its own root, each
set up by `coldclone-server init` (the second takes the first's agents' key: one identity, two
pins). Each runs `coldclone-server web` in its namespace; the first shows the second (over the
site link) as its --peer.

The sources, captured at once, all labelled with the same wave and paced by their own bwlimit so
the wave lasts long enough to lose a server in the middle (the ISO's at 4mbit: on a quiet machine
its capture outran the host sources' start at 8mbit):
  G   the live ISO booting in QEMU (TCG), headless, with both servers on its kernel command line
      (coldclone.server=A,B coldclone.hostkey=PA,PB coldclone.failover=15): it picks one, X;
  S1  a host disk captured with `--to X` only: when X is lost it waits, and resumes there when X
      is back;
  S2, S3  host disks with both servers and --failover 5: they go where the load says, and move.
Once G and S1 stream into X, X is lost (its sshd and every receiver killed -9). G moves to the
other server (after 15 s of X unreachable) and starts there anew; then X comes back and S1
resumes on it. At the end every image equals its source, and `coldclone-server status --json`
on both servers says where each capture got done and what the lost server still holds.

A real browser (chromium through selenium) keeps the first server's page open through it all and
sees the rows change. One ISO boot for all of it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

from agent.runcmd import run
from tests.testbed import browser, synthdisk
from tests.testbed.convserver import ConversionServer, remove_user
from tests.testbed.loop import LoopDevice
from tests.testbed.netns import VethNamespace
from tests.testbed.procs import Spooled

from . import guest
from .conftest import LOG_DIR, TIMEOUT, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

MiB = 1 << 20
WAVE = "ccw-wave-1"
HOSTS = ("ccw-s1", "ccw-s2", "ccw-s3")
WEB_PORT = 8023
BIN = os.path.dirname(os.path.abspath(__import__("sys").executable))
KEEP = bool(os.environ.get("COLDCLONE_VM_KEEP"))


def _clear_stale() -> None:
    """What an interrupted run of this test left (only ours: the ccw-w* names)."""
    for ns in ("ccw-wa", "ccw-wb"):
        run(["ip", "netns", "del", ns], check=False, quiet=True)
    for link in ("ccwa0", "ccwb0"):
        run(["ip", "link", "del", link], check=False, quiet=True)
    for u in ("ccw-wa", "ccw-wb"):
        remove_user(u)


class Wave:
    """Everything the wave left to judge it by."""

    def __init__(self, work: str):
        self.work = work
        self.servers: list[ConversionServer] = []
        self.sources: dict[str, str] = {}        # capture id (or "G") -> source image
        self.guest_disk: guest.SourceDisk | None = None
        self.guest_run: guest.Run | None = None
        self.guest_id: str | None = None
        self.lost: ConversionServer | None = None
        self.outputs: dict[str, str] = {}
        self.rows: list[tuple[float, dict]] = []   # what the browser saw, when
        self.timeline: dict[str, float] = {}
        self.statuses: dict[str, list[dict]] = {}
        self.page_totals: list[str] = []
        self.screenshots: list[str] = []
        self.seconds = 0.0

    def server(self, name: str) -> ConversionServer:
        return next(s for s in self.servers if s.name == name)

    def other(self, srv: ConversionServer) -> ConversionServer:
        return next(s for s in self.servers if s is not srv)


def _statuses(servers) -> dict[str, list[dict]]:
    return {s.name: s.status() for s in servers}


def _find(statuses: dict[str, list[dict]], cid: str, *states: str) -> list[str]:
    """The servers whose status shows capture cid in one of these states."""
    return [name for name, sts in statuses.items() for s in sts if s["capture_id"] == cid and s["state"] in states]


def _until(what: str, check, timeout: float, also=None):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if also is not None:
            also()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def wave():
    _skip_unless_ready("kernel")
    why = browser.missing()
    if why:
        pytest.skip(why)
    _clear_stale()
    work = tempfile.mkdtemp(prefix="ccw-wave-", dir="/var/tmp")
    os.chmod(work, 0o755)
    w = Wave(work)
    links = [VethNamespace("ccw-wa", "ccwa0", "ccwa1", "10.231.1.1/30", "10.231.1.2/30"),
             VethNamespace("ccw-wb", "ccwb0", "ccwb1", "10.231.2.1/30", "10.231.2.2/30")]
    loops: list[LoopDevice] = []
    procs: list[subprocess.Popen] = []
    stop_guest = threading.Event()
    boot_thread = None
    t0 = time.monotonic()
    try:
        for link in links:
            link.up()
        # the two servers' own network (a site's LAN): the page of one asks the other over it
        run(["ip", "link", "add", "ccwab0", "netns", "ccw-wa", "type", "veth", "peer", "name", "ccwab1",
             "netns", "ccw-wb"])
        for ns, dev, cidr in (("ccw-wa", "ccwab0", "10.231.3.1/30"), ("ccw-wb", "ccwab1", "10.231.3.2/30")):
            run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        a = ConversionServer("ccw-wa", "ccw-wa", os.path.join(work, "a"), ns=links[0])
        b = ConversionServer("ccw-wb", "ccw-wb", os.path.join(work, "b"), ns=links[1])
        w.servers = [a, b]
        a.set_up()
        b.set_up("--identity", a.init.identity)
        for s in w.servers:
            s.start()
        b.start_web(WEB_PORT, listen="0.0.0.0")
        web_a = a.start_web(WEB_PORT, peers=(f"http://10.231.3.2:{WEB_PORT}",))

        # the sources: small but real (partition tables, filesystems, files, remnants)
        w.guest_disk = guest.os_disk(os.path.join(work, "g.img"), serial="ccw-g", size_mb=192, files_mb=24,
                                     remnant_mb=24)
        w.sources["G"] = w.guest_disk.image
        for cid in HOSTS:
            img = os.path.join(work, f"{cid}.img")
            synthdisk.build(img, size=128 * MiB, table="gpt", files_mb=8, remnant_mb=16, swap_mb=8)
            loop = LoopDevice(img).__enter__()
            loops.append(loop)
            w.sources[cid] = img
        sums = {k: guest.sha256_of(v) for k, v in w.sources.items()}

        fw, identity = guest.fwcfg_file("identity", a.init.identity)
        cmdline = (f"coldclone.server={a.url()},{b.url()} coldclone.hostkey={a.init.hostkey},{b.init.hostkey} "
                   f"coldclone.identity={identity} coldclone.wave={WAVE} coldclone.failover=15 "
                   f"coldclone.bwlimit=4mbit coldclone.calibrate=0 coldclone.progress=5")
        result: dict = {}

        def boot() -> None:
            result["run"] = guest.boot_headless("kernel", cmdline, extra_args=fw + guest.disk_args([w.guest_disk]),
                                                timeout=TIMEOUT + 300, name="vm-wave", log_dir=LOG_DIR,
                                                stop_when=stop_guest.is_set)

        boot_thread = threading.Thread(target=boot, name="vm-wave")
        boot_thread.start()

        with browser.Browser() as br:
            br.driver.get(web_a + "/")

            def watch() -> None:
                w.rows.append((time.monotonic() - t0, br.rows()))

            # G streams into X: which server it chose
            def guest_streaming():
                sts = _statuses(w.servers)
                for name, lst in sts.items():
                    for s in lst:
                        if s["capture_id"] not in HOSTS and s["state"] == "streaming" and s["done"]:
                            return name, s["capture_id"]
                assert boot_thread.is_alive(), "the guest ended before its capture started:\n" + (
                    result["run"].explain() if "run" in result else "")
                return None

            x_name, w.guest_id = _until("the guest's capture streams", guest_streaming, TIMEOUT, also=watch)
            w.timeline["guest streaming"] = time.monotonic() - t0
            x = w.server(x_name)
            y = w.other(x)
            w.lost = x

            def host_capture(cid: str, to: list[ConversionServer], *extra: str) -> Spooled:
                argv = [os.path.join(BIN, "coldclone"), "capture", "--disk", loops[HOSTS.index(cid)].dev,
                        "--identity", a.init.identity, "--capture-id", cid, "--wave", WAVE, "--calibrate", "0",
                        "--bwlimit", "8mbit", "--progress-interval", "2", *extra]
                for s in to:
                    argv += ["--to", s.url(), "--hostkey", s.init.hostkey]
                p = Spooled(argv)
                procs.append(p)
                return p

            caps = {"ccw-s1": host_capture("ccw-s1", [x]),
                    "ccw-s2": host_capture("ccw-s2", [a, b], "--failover", "5"),
                    "ccw-s3": host_capture("ccw-s3", [a, b], "--failover", "5")}

            def all_streaming():
                sts = _statuses(w.servers)
                return (all(_find(sts, cid, "streaming") for cid in HOSTS)
                        and _find(sts, w.guest_id, "streaming") == [x.name]
                        and [s for s in sts[x.name] if s["capture_id"] == "ccw-s1" and s["done"] > 2 * MiB])

            _until("all four stream, G and S1 into the same server", all_streaming, 180, also=watch)
            watch()
            br.driver.save_screenshot(os.path.join(work, "page-streaming.png"))
            w.screenshots.append(os.path.join(work, "page-streaming.png"))
            w.timeline["all streaming"] = time.monotonic() - t0

            x.kill()
            w.timeline["server lost"] = time.monotonic() - t0
            # G moves to the other server after 15 s of X unreachable, and starts there anew
            _until("the guest's capture moves", lambda: _find(_statuses(w.servers), w.guest_id, "streaming",
                                                              "verified") == [y.name], 120, also=watch)
            w.timeline["guest moved"] = time.monotonic() - t0
            watch()
            br.driver.save_screenshot(os.path.join(work, "page-server-lost.png"))
            w.screenshots.append(os.path.join(work, "page-server-lost.png"))
            x.start()                     # X is back: S1 resumes there
            w.timeline["server back"] = time.monotonic() - t0

            # the browser keeps looking while the rest of the wave runs
            _until("the host sources end", lambda: all(p.poll() is not None for p in caps.values()), 600,
                   also=watch)
            for cid, p in caps.items():
                out, err = p.communicate(timeout=60)
                w.outputs[cid] = out + err
                assert p.returncode == 0, f"{cid} failed ({p.returncode}):\n{(out + err)[-4000:]}"
            w.timeline["host sources done"] = time.monotonic() - t0
            _until("the guest powers off", lambda: not boot_thread.is_alive(), TIMEOUT + 300, also=watch)
            w.guest_run = result.get("run")
            w.timeline["guest done"] = time.monotonic() - t0
            # the page catches up with the end (it refreshes every second)
            try:
                _until("the page shows the wave done", lambda: any("servers done 4 of 4" in t for t in br.totals()),
                       30, also=watch)
            finally:
                w.page_totals = br.totals()
                br.driver.save_screenshot(os.path.join(work, "page-done.png"))
                w.screenshots.append(os.path.join(work, "page-done.png"))
            watch()
        w.statuses = _statuses(w.servers)
        w.seconds = time.monotonic() - t0
        for k, v in sums.items():
            assert guest.sha256_of(w.sources[k]) == v, f"source {k} changed during the wave"
        yield w
    finally:
        stop_guest.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if boot_thread is not None:
            boot_thread.join(60)
        for s in w.servers:
            s.stop()
        for loop in loops:
            loop.__exit__(None, None, None)
        for link in links:
            link.down()
        for u in ("ccw-wa", "ccw-wb"):
            remove_user(u)
        if KEEP:
            print(f"\n  kept {work}")
        else:
            os.makedirs(LOG_DIR, exist_ok=True)
            for shot in w.screenshots:
                if os.path.exists(shot):
                    shutil.copy(shot, os.path.join(LOG_DIR, "wave-" + os.path.basename(shot)))
            shutil.rmtree(work, ignore_errors=True)


def _done_on(w: Wave, cid: str) -> ConversionServer:
    [name] = _find(w.statuses, cid, "verified")
    return w.server(name)


def test_every_image_equals_its_source(wave):
    run_ = wave.guest_run
    assert run_ is not None and run_.console.ok, run_.explain() if run_ else "no guest run"
    assert run_.console.capture_id == wave.guest_id
    for cid in (wave.guest_id, *HOSTS):
        srv = _done_on(wave, cid)
        m = json.load(open(os.path.join(srv.root, cid, "manifest.json")))
        assert m["wave"] == WAVE and m["status"] == "complete"
        [d] = m["disks"]
        src = wave.sources["G" if cid == wave.guest_id else cid]
        guest.qemu_img_compare(src, os.path.join(srv.root, cid, d["image"]))
    print(f"\n  the wave took {wave.seconds:.0f} s: " + ", ".join(f"{k} at {v:.0f} s" for k, v in wave.timeline.items()))


def test_status_on_both_servers_says_so(wave):
    x, y = wave.lost, wave.other(wave.lost)
    st = wave.statuses
    for cid in (wave.guest_id, *HOSTS):
        assert len(_find(st, cid, "verified")) == 1, (cid, st)
        for name, lst in st.items():
            for s in lst:
                if s["capture_id"] == cid:
                    assert s["wave"] == WAVE and s["server"], s
                    assert s["state"] in ("verified", "resumable"), s
    # G was lost with X and finished on the other; X still holds what G had sent (resumable)
    assert _find(st, wave.guest_id, "verified") == [y.name]
    assert _find(st, wave.guest_id, "resumable") == [x.name]
    # S1, pinned to X, waited for it and resumed there: only the rest was sent
    assert _find(st, "ccw-s1", "verified") == [x.name]
    m = json.load(open(os.path.join(x.root, "ccw-s1", "manifest.json")))
    assert m["disks"][0]["resume"]["resumed_from"] > 0, m["disks"][0].get("resume")
    # S2, S3 on X (if the load put them there) moved like G; on Y they went on
    for cid in ("ccw-s2", "ccw-s3"):
        text = wave.outputs[cid]
        if _find(st, cid, "resumable"):
            assert f"the capture moves to {y.url()}" in text, text[-3000:]
    con = wave.guest_run.console.text
    assert f"is not reachable for" in con and f"the capture moves to {y.url()}" in con, \
        wave.guest_run.console.excerpt("not reachable")


def test_the_page_followed_the_wave(wave):
    """What the browser saw: rows that changed state and grew, both servers on one page, the end."""
    seen: dict[str, list[tuple[str, int]]] = {}
    for _, rows in wave.rows:
        for key, (state, done, _) in rows.items():
            if not seen.get(key) or seen[key][-1] != (state, done):
                seen.setdefault(key, []).append((state, done))
    assert len(wave.rows) >= 10, len(wave.rows)
    servers = {key.split("@", 1)[1] for key in seen}
    assert servers == {"ccw-wa", "ccw-wb"}, servers
    moved = [k for k, v in seen.items() if v[0][0] == "streaming" and v[-1][0] == "verified"]
    assert len(moved) >= 3, seen
    assert any(len({d for s, d in v if s == "streaming"}) >= 2 for v in seen.values()), seen
    lost = f"{wave.guest_id}@{wave.lost.name}"
    assert [s for s, _ in seen[lost]][0] == "streaming" and seen[lost][-1][0] == "resumable", seen[lost]
    assert any("servers done 4 of 4, failed 0" in t for t in wave.page_totals), wave.page_totals
