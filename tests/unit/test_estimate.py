"""The estimator: link classification from recorded machines, its arithmetic, ETA convergence."""

import json
import random
from pathlib import Path

import pytest

from agent import records
from agent import protocol as P
from agent.source.discover import populate, snapshot
from agent.source.discover.model import Link
from agent.source.estimate import links as L
from agent.source.estimate.plan import (READBACK_RATE, SETUP_SECONDS, _per_disk,
                                 estimate_capture, target_link)
from agent.source.estimate.progress import EtaEstimator, Motion
from tests.unit.plans import one_disk_plan
from agent.source.estimate.rate import RateMeter
from agent.source.estimate.sample import ContentSample, sample_content
from agent.source.transport.localdisk import candidates

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "udev"
MB = 1_000_000
GB = 1_000_000_000


def machine(name):
    return populate.from_snapshot(snapshot.load(FIXTURES / f"{name}.json"))


# ------------------------------------------------------------------ links

def test_links_of_recorded_usb2_machine():
    inv = machine("usb2")
    sdb = L.classify_disk_link(inv.disk("sdb").link)        # USB 2.0 disk enclosure, sysfs speed 480
    assert (sdb.kind, sdb.label, sdb.rate) == ("usb", "USB 2.0 link", 25 * MB)
    assert "2015 field study" in sdb.source and "4096 s" in sdb.source
    sda = L.classify_disk_link(inv.disk("sda").link)        # ata_link/sata_spd "3.0 Gbps"
    assert sda.kind == "sata" and sda.rate == pytest.approx(180 * MB)
    assert sdb.describe() == "USB 2.0 link (~25 MB/s)"


def test_links_of_recorded_usb3_machine():
    inv = machine("usb3")
    assert L.classify_disk_link(inv.disk("sdb").link).rate == 100 * MB          # 5000: USB 3.0
    g2 = L.classify_disk_link(inv.disk("sdc").link)                             # 10000: USB 3.1 Gen 2
    assert g2.label == "USB 3.1 Gen 2 link" and g2.rate == 200 * MB
    assert L.classify_disk_link(inv.disk("sda").link).rate == pytest.approx(360 * MB)  # SATA 6 Gb/s


def test_link_table_is_the_field_study():
    # 100 GB at the study's real rates, in the study's units (GB = 1024 MB).
    for key, seconds in (("usb2", 4096), ("usb3", 1024), ("esata", 569), ("nfs1g", 1024)):
        spec = L.TABLE[key]
        assert 100 * 1024 * MB / spec.effective == pytest.approx(seconds, rel=0.001), key
    assert L.TABLE["usb2"].nominal == 60 * MB and L.TABLE["esata"].nominal == 384 * MB


def test_unknown_speeds_and_nics():
    assert L.classify_disk_link(Link("usb", "1-1", None, "USB (unknown speed)")).rate == 25 * MB
    assert L.classify_disk_link(Link("usb", "1-1", 12, "USB 1.1")).rate == 1 * MB
    assert L.classify_disk_link(Link("sata", "ata2", None, "SATA (link speed unknown)")).rate == pytest.approx(180 * MB)
    assert L.classify_disk_link(None) is None
    nfs = L.nic_link("eno1", 1000, "nfs")
    assert nfs.rate == pytest.approx(100 * MB) and nfs.label == "NFS over eno1 (1000 Mb/s)"
    ssh = L.nic_link("eth0", 100, "ssh")                     # the usb2 machine's 100 Mb/s port
    assert ssh.rate == pytest.approx(100 / 8 * L.SSH_EFFICIENCY * MB)
    assert L.nic_link("ens3", None, "ssh").rate == pytest.approx(125 * L.SSH_EFFICIENCY * MB)
    assert L.classify_disk_link(Link("nic", "eth1", 10000, "10000 Mb/s")).rate == pytest.approx(1125 * MB)


def test_source_read_defaults_follow_the_disk():
    assert L.source_read_default(machine("nvme").disk("nvme0n1"))[0] == 1500 * MB
    assert L.source_read_default(machine("hpsa").disk("sda"))[0] == 300 * MB
    assert L.source_read_default(machine("usb2").disk("sdb"))[0] == 25 * MB     # a USB 2.0 source
    assert L.source_read_default(machine("usb2").disk("sda"))[0] == 150 * MB    # rotational SATA


def test_target_disk_candidates_never_a_source_or_the_live_medium():
    inv = machine("usb2")
    # Default sources: what discovery offers for capture (sda, sdb); sdc is the live stick.
    assert [c.name for c in candidates(inv)] == []
    got = candidates(inv, sources=["/dev/sda"])
    assert [c.name for c in got] == ["sdb"] and got[0].link == "USB 2.0"
    inv3 = machine("usb3")
    got = candidates(inv3, sources=["/dev/sda"])
    # sdc is mounted at /mnt/target by the operator: a target, not a source; sr0 is the live medium.
    assert [c.name for c in got] == ["sdb", "sdc"]


def test_target_link_for_urls(tmp_path):
    inv = machine("usb3")
    assert target_link(None, inv) is None
    lo = target_link("ssh://u@127.0.0.1/srv", inv)
    assert lo.kind == "loopback" and lo.rate is None
    local = target_link(f"file://{tmp_path}", inv)
    assert local.kind == "local" and local.rate is None


# ------------------------------------------------------------- arithmetic

def _sample(size, frac, ratio, cpu=0.0):
    return ContentSample(size=size, samples=256, sampled_bytes=64 << 20, nonzero_fraction=frac,
                         compress_ratio=ratio, cpu_per_byte=cpu, sample_seconds=0.1)


def test_per_disk_arithmetic_usb2_full_disk():
    """The study's case: 100 GB of incompressible data over USB 2.0 takes 4000 s (+ the server's part)."""
    size = 100 * GB
    d = _per_disk("/dev/sda", None, _sample(size, 1.0, 1.0, cpu=1 / (2000 * MB)), 500 * MB, "t",
                  25 * MB, READBACK_RATE, 2, "raw", "full")
    assert d.bytes_to_read == size and d.data_bytes == size
    assert d.bytes_to_send == pytest.approx(size, rel=1e-4)
    assert d.stages["link"] == pytest.approx(4000, rel=1e-4)
    assert d.stages["read"] == pytest.approx(200) and d.stages["cpu"] == pytest.approx(25)
    # raw: the read-back follows the stream, only its last step is left after END
    assert d.stages["server"] == pytest.approx(P.READBACK_STEP / READBACK_RATE)
    assert d.seconds == pytest.approx(4000 + P.READBACK_STEP / READBACK_RATE, rel=1e-4)
    assert d.bottleneck == "link"


def test_per_disk_arithmetic_zero_skip_and_qcow2():
    size = 10 * GB
    d = _per_disk("/dev/sdb", None, _sample(size, 0.3, 0.5), 100 * MB, "t", 1000 * MB, READBACK_RATE, 2,
                  "qcow2", "nonzero")
    data = 3 * GB
    assert d.data_bytes == data and d.bytes_to_send == pytest.approx(1.5 * GB, rel=1e-3)
    assert d.stages["read"] == pytest.approx(100) and d.bottleneck == "read"
    # the read-back follows the stream, and the qcow2 is written directly (issue 21): only the
    # read-back's last step is left after END, as for raw
    post = P.READBACK_STEP / READBACK_RATE
    assert d.stages["server"] == pytest.approx(post)
    assert d.seconds == pytest.approx(100 + post)


def test_per_disk_with_the_receiver_on_this_machine_adds_the_reads_cpu_to_the_pipeline():
    """Loopback or a local target: the probe's pace is this machine's CPU and the source's reads
    take from the same CPUs for their CPU share, so the stream takes read x share + pipeline
    (make demo: the overlap model was 24-69 % short). A remote receiver keeps the overlap."""
    size = 2 * GB
    args = ("/dev/loop1", None, _sample(size, 0.2, 0.5), 400 * MB, "measured", 40 * MB, READBACK_RATE, 2,
            "raw", "nonzero")
    remote = _per_disk(*args)
    read, link = remote.stages["read"], remote.stages["link"]
    assert read == pytest.approx(5.0) and link == pytest.approx(5.0, rel=1e-3)
    post = remote.stages["server"]
    assert remote.seconds == pytest.approx(max(read, link) + post)
    cached = _per_disk(*args, colocated_read_share=1.0)      # a loop device over a cached file
    assert cached.seconds == pytest.approx(read + link + post) and cached.bottleneck == "shared"
    disk = _per_disk(*args, colocated_read_share=0.1)        # a real disk: the reads mostly wait
    assert disk.seconds == pytest.approx(max(read, 0.1 * read + link) + post)


def _sparse_file(path, size, runs):
    with open(path, "wb") as f:
        f.truncate(size)
        rnd = random.Random(7)
        for off, n in runs:
            f.seek(off)
            f.write(rnd.randbytes(n))


def test_sampling_finds_data_share_despite_regular_layout(tmp_path):
    """1 MiB of data every 64 MiB: evenly spaced samples would alias with it; strata do not."""
    size, step = 4 << 30, 64 << 20
    p = str(tmp_path / "disk.img")
    _sparse_file(p, size, [(off, 1 << 20) for off in range(0, size, step)])
    s = sample_content(p, samples=512, sample_size=256 << 10)
    assert s.nonzero_fraction == pytest.approx(1 / 64, rel=0.5)
    assert s.compress_ratio == pytest.approx(1.0, abs=0.01)       # random data does not compress


def test_estimate_capture_on_a_file_without_calibration(tmp_path):
    size = 1 << 30
    p = str(tmp_path / "disk.img")
    _sparse_file(p, size, [(off, 8 << 20) for off in range(0, size, 32 << 20)])   # 25% data
    est = estimate_capture(None, [p], None, "nonzero", calibrate_seconds=0)
    (d,) = est.disks
    assert d.nonzero_fraction == pytest.approx(0.25, abs=0.05)
    assert d.bytes_to_send == pytest.approx(size / 4, rel=0.2)
    assert d.read_rate == 150 * MB and "7200 rpm" in d.read_rate_source
    assert est.total_seconds == pytest.approx(SETUP_SECONDS + d.seconds)
    assert not est.calibrated and est.link is None
    # Every transport of the study, for the operator to compare.
    labels = [a.label for a in est.alternatives]
    assert labels == ["USB 2.0 link", "USB 3.0 link", "e-SATA link", "NFS over 1 GbE"]
    usb2 = est.alternatives[0]
    assert usb2.seconds == pytest.approx(SETUP_SECONDS + d.bytes_to_send / (25 * MB) + d.stages["server"], rel=0.01)
    js = json.loads(records.dumps(est))
    assert js["disks"][0]["path"] == p and js["total_seconds"] == est.total_seconds
    assert any("downtime" in line for line in est.lines())
    # mode full: every byte is read and the zeros are still sent (compressed to almost nothing)
    full = estimate_capture(None, [p], None, "full", calibrate_seconds=0)
    assert full.disks[0].nonzero_fraction == 1.0 and full.disks[0].bytes_to_send < size * 0.3


def test_bottleneck_names_the_usb_link(tmp_path, monkeypatch):
    p = str(tmp_path / "disk.img")
    _sparse_file(p, 256 << 20, [(0, 128 << 20)])
    monkeypatch.setattr("agent.source.estimate.plan.target_link",
                        lambda *a, **k: L.classify_disk_link(Link("usb", "2-1", 480, "USB 2.0")))
    est = estimate_capture(None, [p], "file:///mnt/usb", "nonzero", calibrate_seconds=0)
    assert est.bottleneck == "limited by USB 2.0 link (~25 MB/s)"


def test_bad_mode_and_no_disk():
    from agent.errors import UsageError

    with pytest.raises(UsageError, match="mode"):
        estimate_capture(None, ["/dev/null"], None, "sparse")
    with pytest.raises(UsageError, match="no disk to estimate"):
        estimate_capture(None, [], None, "nonzero")


# -------------------------------------------------------------------- ETA

CHUNK = 4 << 20


def _run(true_rate, plan=None, size=10 * GB, noise=0.4, seed=1, wire_ratio=0.5):
    """Feed a synthetic capture (4 MiB chunks at a noisy constant rate); return (progress, eta, truth)."""
    rnd = random.Random(seed)
    steps = []
    t = 0.0
    done = wire = 0
    while done < size:
        n = min(CHUNK, size - done)
        t += n / true_rate * (1 + rnd.uniform(-noise, noise))
        done += n
        wire += int(n * wire_ratio)
        steps.append((t, done, wire))
    total_time = t
    eta = EtaEstimator(plan)
    out = []
    for t, done, wire in steps:
        e = eta.update(t, "sda", done, size, done, size, wire)
        out.append((done / size, e, total_time - t))
    return out


def _errors_after(out, frac):
    return [abs(e - truth) / max(truth, 1e-9) for p, e, truth in out if p >= frac and truth > 30 and e is not None]


def test_eta_without_plan_converges():
    out = _run(50 * MB)
    assert max(_errors_after(out, 0.2)) < 0.10
    assert max(_errors_after(out, 0.5)) < 0.05


def test_eta_with_a_wrong_plan_converges_to_the_truth():
    size = 10 * GB
    # The plan believed 35 MB/s on the wire; the link really does 50 MB/s of disk (25 MB/s of wire).
    plan = one_disk_plan("/dev/sda", size, size // 2, {"read": size / (150 * MB), "cpu": 10.0,
                                                       "link": size / 2 / (35 * MB), "server": 0.0})
    out = _run(50 * MB, plan=plan)
    first = out[0][1]
    assert first == pytest.approx(size / 2 / (35 * MB), rel=0.05)       # trusts the plan at first
    errs = _errors_after(out, 0.3)
    assert max(errs) < 0.08
    assert max(_errors_after(out, 0.6)) < 0.04


def test_eta_follows_a_rate_change():
    """The link halves its rate a third of the way through: the ETA catches up."""
    size = 6 * GB
    rnd = random.Random(3)
    eta = EtaEstimator(None)
    t, done = 0.0, 0
    pts = []
    while done < size:
        rate = 60 * MB if done < size / 3 else 30 * MB
        t += CHUNK / rate * (1 + rnd.uniform(-0.3, 0.3))
        done += CHUNK
        pts.append((t, done, eta.update(t, "sda", done, size, done, size, done)))
    end = t
    late = [abs(e - (end - tt)) / (end - tt) for tt, d, e in pts if d > 0.6 * size and end - tt > 20]
    assert late and max(late) < 0.15


def test_adaptive_rate_smooths_more_as_time_goes_on():
    r = RateMeter.adaptive()
    r.update(0.0, 0)
    r.update(1.0, 100)
    assert r.rate == 100
    for i in range(2, 200):
        r.update(float(i), 100 * i)
    before = r.rate
    r.update(200.0, 100 * 199 + 1000)      # one 10x burst late in the run barely moves it
    assert before == pytest.approx(100) and r.rate < 115

    m = RateMeter()                        # the display meter (10 s half-life) moves more
    for i in range(200):
        m.update(float(i), 100 * i)
    m.update(200.0, 100 * 199 + 1000)
    assert m.rate > 150


# ------------------------------------------------------------ the printer

def test_progress_printer_lines_cadence_and_summary(monkeypatch):
    """Recorded events at a fake clock: a line per interval with rates, ETA, bottleneck; a summary."""
    import io

    from agent.source.capture import events as E
    from agent.source.capture.session import CaptureResult
    from agent.manifest import Manifest
    from agent.source.capture.source import SourceDisk
    from agent.source import console as PR   # the line renderer: ProgressPrinter, print_summary

    clock = {"t": 1000.0}
    monkeypatch.setattr(PR.time, "monotonic", lambda: clock["t"])
    size = 4 * GB
    plan = one_disk_plan("/dev/sda", size, size // 2, {"read": 20.0, "cpu": 5.0, "link": 180.0, "server": 20.0},
                         total_seconds=200.0, bottleneck="limited by USB 2.0 link (~25 MB/s)")
    out = io.StringIO()
    p = PR.ProgressPrinter(5.0, out=out, estimate=plan)
    p(E.CaptureStarted("cap-1", "file:///mnt/usb", [SourceDisk("/dev/sda", "sda", "sda", size, 512, 512)], size))
    p(E.DiskStarted("sda", "/dev/sda", size))
    step = size // 100
    for i in range(1, 101):
        clock["t"] += 2.0            # 2 s per 1% -> 200 s of streaming, 10 s a line
        p(E.Progress("sda", i * step, size, i * step, size, i * step, i * step // 2, 0, clock["t"] - 1000))
    p(E.DiskFinished("sda", "ab" * 32, {}))
    clock["t"] += 6.0
    p.tick()                          # the server phase keeps the cadence
    text = out.getvalue().splitlines()
    prog = [l for l in text if l.startswith("sda:")]
    assert 30 <= len(prog) <= 42      # one per 5 s of 200 s, at the first event after each 5 s
    assert "estimate: ~03:20, limited by USB 2.0 link (~25 MB/s)" in out.getvalue()
    mid = prog[len(prog) // 2]
    assert "ETA 01:" in mid and "[limited by USB 2.0 link (~25 MB/s)]" in mid and "wire 10." in mid
    assert text[-1].startswith("server verifying and converting:")
    st = p.figures()
    assert st.phase == "server" and st.total_done == size and st.eta is not None
    res = CaptureResult("cap-1", "file:///mnt/usb", "/mnt/usb/cap-1", Manifest("cap-1", "complete", []),
                        230.0, size, size // 2, 0, size)
    buf = io.StringIO()
    PR.print_summary(res, out=buf, estimate=plan)
    assert "estimate: 200.0 s predicted, 230.0 s actual (+15%)" in buf.getvalue()
    # A resumed capture: the estimate was for all of it, and the line says what was held.
    from agent.manifest import DiskResume, ManifestDisk, Verified
    disk = ManifestDisk("sda", "sda.qcow2", "qcow2", size, "ab" * 32, "sha256-tree", Verified(),
                        resume=DiskResume(resumed_from=size // 2, data_bytes_before=size // 4))
    res = CaptureResult("cap-1", "file:///mnt/usb", "/mnt/usb/cap-1", Manifest("cap-1", "complete", [disk]),
                        90.0, size, size // 2, 0, size)
    buf = io.StringIO()
    PR.print_summary(res, out=buf, estimate=plan)
    assert "estimate: 200.0 s predicted, 90.0 s actual (-55%; 1.9 GiB were held from an earlier attempt)" \
        in buf.getvalue(), buf.getvalue()


def test_progress_says_stalled_and_the_eta_stops_counting_down(monkeypatch):
    """Nothing read or sent for a while: the line says STALLED for N s (not the last rate and
    ETA 00:00), the ETA stops counting down so the finish slips, and it recovers when data moves."""
    import io

    from agent.source import console as PR
    from agent.source.capture import events as E
    from agent.source.capture.source import SourceDisk

    clock = {"t": 1000.0}
    monkeypatch.setattr(PR.time, "monotonic", lambda: clock["t"])
    size = 1 * GB
    out = io.StringIO()
    p = PR.ProgressPrinter(5.0, out=out)
    p(E.CaptureStarted("cap-s", "file:///x", [SourceDisk("/dev/sda", "sda", "sda", size, 512, 512)], size))
    p(E.DiskStarted("sda", "/dev/sda", size))
    step = size // 100
    for i in range(1, 21):            # 20% in 20 s: 80 s left at that pace
        clock["t"] += 1.0
        p(E.Progress("sda", i * step, size, i * step, size, i * step, i * step, 0, clock["t"] - 1000))
    eta_at_last_move = p.figures().eta
    assert 60 < eta_at_last_move < 100
    assert p.figures().stalled_for == 0.0
    clock["t"] += 40.0                # the link hangs: no event at all for 40 s
    p.tick()
    last = out.getvalue().splitlines()[-1]
    assert "STALLED for 40 s: nothing read or sent" in last, last
    assert "MB/s" not in last.split("|")[2]
    # the countdown stopped STALL_AFTER seconds after the last byte, not 40 s later
    assert p.figures().eta == pytest.approx(eta_at_last_move - Motion.STALL_AFTER)
    assert p.figures().stalled_for == pytest.approx(40.0)
    clock["t"] += 1.0                 # data moves again
    p(E.Progress("sda", 21 * step, size, 21 * step, size, 21 * step, 21 * step, 0, clock["t"] - 1000))
    assert p.figures().stalled_for == 0.0
    clock["t"] += 5.0
    p.tick()
    assert "STALLED" not in out.getvalue().splitlines()[-1]
