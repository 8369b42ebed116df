"""Bandwidth caps over a real sshd: the agent's own (`--bwlimit`, coldclone.bwlimit=: a token
bucket in its sender) and a conversion server's total (`coldclone-server init --bwlimit`, which
puts `coldclone-receive --bwlimit` in the forced command: its sessions share it).

A cap is an upper bound, so that is what is asserted: the bytes over the whole run's wall time
never exceed it (a loaded machine can only make a run slower). Incompressible sources with
`--compress none`: the wire carries every byte.
"""

import json
import os
import shutil
import tempfile
import time

import pytest

from tests.conftest import BIN, ssh_args
from tests.integration.test_resume import same_image
from tests.testbed.convserver import ConversionServer, remove_user
from tests.testbed.loop import LoopDevice
from tests.testbed.procs import Spooled

pytestmark = pytest.mark.root
MiB = 1 << 20
SIZE = 12 * MiB


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("bw")
    loops = []
    for name in ("a.img", "b.img"):
        with open(d / name, "wb") as f:
            f.write(os.urandom(SIZE))
    with LoopDevice(str(d / "a.img")) as a, LoopDevice(str(d / "b.img")) as b:
        loops = [a, b]
        yield loops


def run_capture(argv) -> tuple[float, str]:
    t0 = time.monotonic()
    p = Spooled(argv)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    return time.monotonic() - t0, out + err


def test_agent_cap_holds_the_stream_and_the_estimate_counts_with_it(sshd, rx_dir, sources):
    cap = 2_000_000                      # 16mbit
    elapsed, text = run_capture([os.path.join(BIN, "coldclone"), "capture", "--disk", sources[0].dev,
                                 *ssh_args(sshd, rx_dir), "--compress", "none", "--calibrate", "0",
                                 "--capture-id", "bw-agent", "--bwlimit", "16mbit"])
    m = json.load(open(os.path.join(rx_dir, "bw-agent", "manifest.json")))
    wire = m["totals"]["stream_bytes"]
    assert wire > SIZE
    # the first burst (a tenth of a second of the rate) goes at once, then the rate holds
    assert wire / elapsed <= cap * 1.05, f"{wire} bytes in {elapsed:.1f} s: {wire / elapsed:.0f} B/s > {cap}"
    assert m["estimate"]["link_rate"] == cap
    assert "bandwidth cap" in m["estimate"]["bottleneck"] and "bwlimit=16.0 Mbit/s" in m["estimate"]["bottleneck"]
    same_image(sources[0].dev, rx_dir, "bw-agent", m["disks"][0])
    print(f"\n  agent cap 2.0 MB/s: {wire / elapsed / 1e6:.2f} MB/s over the whole run ({elapsed:.1f} s)")


@pytest.fixture(scope="module")
def capped_server():
    remove_user("ccw-cap")
    work = tempfile.mkdtemp(prefix="ccw-cap-", dir="/var/tmp")
    os.chmod(work, 0o755)
    srv = ConversionServer("ccw-cap", "ccw-cap", work, init_args=("--bwlimit", "32mbit"))
    srv.start()
    yield srv
    srv.stop()
    remove_user("ccw-cap")
    shutil.rmtree(work, ignore_errors=True)


def test_server_total_cap_is_shared_by_its_sessions(capped_server, sources):
    """Two agents without caps of their own, into a server capped at 4 MB/s in total: together
    they never go faster, and neither is starved."""
    srv, cap = capped_server, 4_000_000
    assert "--bwlimit 32mbit" in open(os.path.expanduser(f"~{srv.user}/.ssh/authorized_keys")).read()
    procs, t0 = [], time.monotonic()
    for i, src in enumerate(sources):
        procs.append(Spooled([os.path.join(BIN, "coldclone"), "capture", "--disk", src.dev,
                              "--to", srv.url(), "--identity", srv.init.identity, "--hostkey", srv.init.hostkey,
                              "--compress", "none", "--calibrate", "0", "--capture-id", f"bw-{i}"]))
    ends = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        ends.append(time.monotonic() - t0)
    wire = sum(json.load(open(os.path.join(srv.root, f"bw-{i}", "manifest.json")))["totals"]["stream_bytes"]
               for i in range(2))
    assert wire / max(ends) <= cap * 1.05, f"{wire} bytes in {max(ends):.1f} s"
    # shared, not one after the other: the first to finish needed more than its bytes alone at the cap
    assert min(ends) > (wire / 2) / cap, ends
    for i, src in enumerate(sources):
        same_image(src.dev, srv.root, f"bw-{i}",
                   json.load(open(os.path.join(srv.root, f"bw-{i}", "manifest.json")))["disks"][0])
    assert os.listdir(os.path.join(srv.root, ".coldclone-sessions")) == []     # every session let go
    print(f"\n  server cap 4.0 MB/s: two sessions {wire / max(ends) / 1e6:.2f} MB/s together, "
          f"ended at {ends[0]:.1f} s and {ends[1]:.1f} s")
