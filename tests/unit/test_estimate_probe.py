"""The receiver's calibration probe mode: real records checked and written, nothing left behind;
and the estimate a capture's HELLO carries lands in the manifest."""

import io
import json
import os

import pytest

from agent import protocol as P
from agent import records
from agent.estimate_model import CaptureEstimate
from tests.unit.plans import one_disk_plan
from agent.server.receive.receiver import Receiver

BS = P.DEFAULT_BLOCK_SIZE


def _records(n_chunks=6, size=1 << 40, probe=True, estimate=None, end=False):
    out = []
    w = P.StreamWriter(out.append)
    w.hello(P.Hello(capture_id=None if probe else "cap-1", agent_version="t", format="raw", disks=("d",),
                    probe=probe, estimate=estimate))
    w.disk(P.DiskHeader(name="d", size=size, block_size=BS, mode="nonzero", codec="none"))
    tree = P.BlockTree(size, BS)
    off = 0
    for i in range(n_chunks):
        buf = os.urandom(4 * BS)
        dig = P.block_digests(buf, BS)
        out.append(P.encode_data(off, len(buf), P.CODEC_NONE, P.record_digest(dig), buf))
        tree.add_digests(off, len(buf), dig)
        off += len(buf)
        out.append(P.encode_zero(off, 4 * BS))
        tree.add_zero(off, 4 * BS)
        off += 4 * BS
    if end:
        w.end(P.DiskEnd(tree.digest()))
    w.finish()
    return b"".join(out)


def _replies(out: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_probe_checks_writes_and_leaves_nothing(tmp_path):
    out = io.BytesIO()
    rc = Receiver(str(tmp_path), out).run(io.BytesIO(_records()))
    rep = _replies(out)
    assert rc == 0, rep
    assert rep[0]["event"] == "ready" and rep[0]["probe"] is True and rep[0]["capture_id"] is None
    probe = rep[-1]
    assert probe["event"] == "probe"
    assert probe["counts"]["data_bytes"] == 6 * 4 * BS and probe["counts"]["zero_bytes"] == 6 * 4 * BS
    # Read back up to the end of the written file (the trailing ZERO run is a hole past it).
    assert probe["covered"] == 12 * 4 * BS and probe["readback_bytes"] == 11 * 4 * BS
    assert probe["seconds"] > 0 and probe["bytes"] > probe["counts"]["data_bytes"]
    assert os.listdir(tmp_path) == []


def test_probe_with_a_corrupt_record_fails_and_leaves_nothing(tmp_path):
    data = bytearray(_records(n_chunks=1))
    data[-200] ^= 0xFF        # inside the DATA payload
    out = io.BytesIO()
    rc = Receiver(str(tmp_path), out).run(io.BytesIO(bytes(data)))
    assert rc == 1 and _replies(out)[-1]["code"] == "corrupt"
    assert os.listdir(tmp_path) == []


def test_probe_abort_leaves_nothing(tmp_path):
    data = _records(n_chunks=2)
    cut = data[:data.rindex(P.encode_finish())] + P.Abort("x").encode()
    out = io.BytesIO()
    assert Receiver(str(tmp_path), out).run(io.BytesIO(cut)) == 0
    assert os.listdir(tmp_path) == []


def test_capture_estimate_lands_in_the_manifest(tmp_path):
    est = one_disk_plan("/dev/d", 16 * BS, 8 * BS, {"link": 12.0, "server": 0.5}, total_seconds=12.5,
                        bottleneck="limited by USB 2.0 link (~25 MB/s)")
    out = io.BytesIO()
    rc = Receiver(str(tmp_path), out).run(io.BytesIO(_records(n_chunks=2, size=16 * BS, probe=False,
                                                              estimate=est, end=True)))
    assert rc == 0, _replies(out)
    m = json.load(open(tmp_path / "cap-1" / "manifest.json"))
    assert records.decode(m["estimate"], CaptureEstimate, "estimate") == est
    ev = m["estimate_vs_actual"]
    assert ev["predicted_seconds"] == 12.5 and ev["actual_seconds"] == m["receive_seconds"]
    assert ev["ratio"] == pytest.approx(m["receive_seconds"] / 12.5, abs=0.001)


def test_hello_advice_is_typed_and_a_malformed_one_is_left_out(tmp_path):
    """The estimate and the readiness report cross the wire as typed models: the manifest holds
    what the agent sent, decoded with every field checked. Advice that does not decode is left
    out of the manifest (the capture is not refused for it), and HELLO's decoder says why."""
    from agent.guestos.model import Firmware
    from agent.guestos.report import ReadinessReport

    est = one_disk_plan("/dev/d", 16 * BS, 8 * BS, {"link": 3.0}, total_seconds=3.5)
    ready = ReadinessReport(os_name="Debian GNU/Linux 12", firmware=Firmware.UEFI, disk="d")
    good = _records(n_chunks=2, size=16 * BS, probe=False, estimate=est, end=True)
    hello = P.Hello(capture_id="cap-1", agent_version="t", format="raw", disks=("d",), estimate=est,
                    readiness=ready)
    assert P.Hello.decode(json.loads(json.dumps(hello.to_json()))) == hello
    stream = good.replace(P.Hello(capture_id="cap-1", agent_version="t", format="raw", disks=("d",),
                                  estimate=est).encode(), hello.encode())
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    out = io.BytesIO()
    assert Receiver(str(tmp_path / "good"), out).run(io.BytesIO(stream)) == 0, _replies(out)
    m = json.load(open(tmp_path / "good" / "cap-1" / "manifest.json"))
    assert records.decode(m["readiness"], ReadinessReport, "readiness") == ready
    assert records.decode(m["estimate"], CaptureEstimate, "estimate") == est

    bad = dict(hello.to_json(), readiness={"firmware": "coreboot"}, estimate={"total_seconds": "soon"})
    decoded = P.Hello.decode(bad)
    assert decoded.readiness is None and decoded.estimate is None
    assert decoded.dropped == ("HELLO estimate: Expected float, got str - at $.total_seconds",
                               "HELLO readiness: Invalid enum value 'coreboot' - at $.firmware")
    out = io.BytesIO()
    stream = good.replace(P.Hello(capture_id="cap-1", agent_version="t", format="raw", disks=("d",),
                                  estimate=est).encode(), P.encode_json(P.T_HELLO, bad))
    assert Receiver(str(tmp_path / "bad"), out).run(io.BytesIO(stream)) == 0, _replies(out)
    m = json.load(open(tmp_path / "bad" / "cap-1" / "manifest.json"))
    assert "readiness" not in m and "estimate" not in m and "estimate_vs_actual" not in m
