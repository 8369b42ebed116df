"""The typed wire metadata: one encoder and one decoder per record, every field checked."""

import io
import json

import pytest

from agent import protocol as P
from tests.unit.plans import one_disk_plan


def decode(rtype, obj_or_bytes):
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return P.Reader(io.BytesIO(P.frame(rtype, body))).read().meta


def test_models_round_trip_through_the_writer():
    hello = P.Hello(capture_id="c-1", agent_version="1.0", format="raw", source={"hostname": "h", "inventory": [1]},
                    disks=("sda", "md127"), estimate=one_disk_plan("/dev/sda", 1 << 30, 1 << 28, {"link": 12.5},
                                                                   total_seconds=12.5))
    disk = P.DiskHeader(name="sda", size=1 << 30, block_size=4096, logical_sector_size=512,
                        physical_sector_size=4096, mode="nonzero", codec="zstd:1", source={"model": "x"},
                        data_bytes_estimate=123)
    end = P.DiskEnd(b"\x05" * 32, bytes_read=1 << 30, data_bytes=5, zero_bytes=7, elapsed=1.25)
    out = []
    w = P.StreamWriter(out.append)
    w.hello(hello)
    w.disk(disk)
    w.end(end)
    w.abort("x" * 5000)
    w.finish()
    r = P.Reader(io.BytesIO(b"".join(out)))
    assert r.read_preamble() == P.VERSION
    assert P.Hello.decode(r.read().meta) == hello
    assert P.DiskHeader.decode(r.read().meta) == disk
    rec = r.read()
    assert P.DiskEnd.decode(rec.digest, rec.meta) == end
    assert P.Abort.decode(r.read().meta).reason == "x" * 2000
    assert r.read().type == P.T_FINISH


def test_older_agents_fields_still_decode():
    """What the hand-written writers sent before the models (wire version 1) is read the same."""
    h = P.Hello.decode(decode(P.T_HELLO, {"capture_id": "x", "agent_version": "0.1", "format": "qcow2",
                                          "source": {"hostname": "h"}, "disks": ["sda"]}))
    assert (h.capture_id, h.format, h.disks, h.probe, h.estimate) == ("x", "qcow2", ("sda",), False, None)
    d = P.DiskHeader.decode(decode(P.T_DISK, {"name": "sda", "size": 4096, "block_size": 4096, "mode": "nonzero"}))
    assert d.data_bytes_estimate is None and d.source == {} and d.codec is None
    assert P.Hello.decode({"probe": True, "capture_id": None}).capture_id is None


@pytest.mark.parametrize("model,obj,match", [
    (P.DiskHeader, {"name": "sda", "size": 1 << 63}, "field 'size' must be an integer from 1 to"),
    (P.DiskHeader, {"name": "sda", "size": 1 << 64}, "field 'size'"),
    (P.DiskHeader, {"name": "sda", "size": -1}, "field 'size'"),
    (P.DiskHeader, {"name": "sda", "size": 4096.0}, "field 'size'"),
    (P.DiskHeader, {"name": "sda", "size": True}, "field 'size'"),
    (P.DiskHeader, {"name": "sda", "size": "4096"}, "field 'size'"),
    (P.DiskHeader, {"name": "sda"}, "field 'size' is missing"),
    (P.DiskHeader, {"size": 4096}, "field 'name' is missing"),
    (P.DiskHeader, {"name": 5, "size": 4096}, "field 'name' must be a string"),
    (P.DiskHeader, {"name": "sda", "size": 4096, "block_size": 3000}, "not a power of two"),
    (P.DiskHeader, {"name": "sda", "size": 4096, "block_size": 256}, "field 'block_size'"),
    (P.DiskHeader, {"name": "sda", "size": 1 << 50, "block_size": 512}, "blocks; use a larger block size"),
    (P.DiskHeader, {"name": "sda", "size": 4096, "logical_sector_size": -512}, "logical_sector_size"),
    (P.DiskHeader, {"name": "sda", "size": 4096, "source": [1]}, "field 'source' must be a JSON object"),
    (P.DiskHeader, {"name": "sda", "size": 4096, "data_bytes_estimate": -5}, "data_bytes_estimate"),
    (P.Hello, {"capture_id": 7}, "field 'capture_id' must be a string"),
    (P.Hello, {}, "field 'capture_id' is missing"),
    (P.Hello, {"capture_id": "x", "disks": "sda"}, "field 'disks' must be a list of strings"),
    (P.Hello, {"capture_id": "x", "probe": "yes"}, "field 'probe' must be true or false"),
    (P.Hello, {"capture_id": "x", "estimate": 3}, "field 'estimate' must be a JSON object"),
])
def test_bad_fields_name_the_record_and_the_field(model, obj, match):
    with pytest.raises(P.ProtocolError, match=match):
        model.decode(obj)


@pytest.mark.parametrize("stats,match", [
    ({"bytes_read": "lots"}, "field 'bytes_read' must be an integer"),
    ({"bytes_read": 1.5}, "field 'bytes_read'"),
    ({"data_records": -1}, "field 'data_records'"),
    ({"elapsed": -0.5}, "field 'elapsed' must be a non-negative number"),
    ({"elapsed": "1s"}, "field 'elapsed'"),
])
def test_bad_end_counts(stats, match):
    with pytest.raises(P.ProtocolError, match=match):
        P.DiskEnd.decode(b"\0" * 32, stats)


@pytest.mark.parametrize("body,match", [
    (b'{"x": NaN}', "NaN is not a JSON number"),
    (b'{"x": -Infinity}', "-Infinity is not a JSON number"),
    (b"[" * 200000 + b"]" * 200000, "nested too deeply"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested too deeply"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
])
def test_json_bodies_are_strict(body, match):
    with pytest.raises(P.ProtocolError, match=match):
        decode(P.T_DISK, body)


def test_writing_nan_is_refused():
    with pytest.raises(ValueError):
        P.Hello(capture_id="x", source={"load": float("nan")}).encode()
    with pytest.raises(ValueError):
        P.dumps({"ratio": float("inf")})


@pytest.mark.parametrize("flags", [1, 2, 0x8000, 0xFFFF])
def test_reserved_preamble_flags(flags):
    with pytest.raises(P.ProtocolError, match=f"preamble flags {flags:#06x} set, but every flag is reserved"):
        P.Reader(io.BytesIO(P.PREAMBLE.pack(P.MAGIC, P.VERSION, flags))).read_preamble()


def test_replies_encode_and_decode():
    ready = P.Reply(P.Event.READY, capture_id=None, path="/srv", receiver_version="1", protocol=1)
    assert json.loads(ready.encode()) == {"event": "ready", "capture_id": None, "path": "/srv",
                                          "receiver_version": "1", "protocol": 1}
    probe_ready = P.Reply(P.Event.READY, path="/srv", probe=True)
    assert P.Reply.decode(probe_ready.encode()).probe is True
    err = P.Reply.decode(P.Reply(P.Event.ERROR, code="corrupt", message="m", path=None).encode())
    assert (err.event, err.code, err.message) == ("error", "corrupt", "m")
    done = P.Reply.decode(b'{"event":"probe","bytes":5,"seconds":1.5,"readback_bytes":3,"counts":{"a":1}}')
    assert (done.bytes, done.seconds, done.readback_bytes, done.counts) == (5, 1.5, 3, {"a": 1})
    for line in (b"bash: coldclone-receive: command not found\n", b"[1]", b'{"event": 5}',
                 b'{"event":"probe","bytes":"many"}'):
        assert P.Reply.decode(line).event == P.Event.NOISE
    assert P.parse_reply(b"plain words") == {"event": "noise", "text": "plain words"}
