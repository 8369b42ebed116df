"""The wire's JSON bodies declared once (agent/protocol.py dataclasses through agent/records.py):
the limits a refusal names come from the declarations, a field at its default is not written,
and what the hand-written writers of the previous release sent decodes the same."""

import json

import pytest

from agent import protocol as P
from agent import records

HEAD = "ab" * 32


@pytest.mark.parametrize("decode,match", [
    (lambda: P.Hello.decode({"capture_id": "x", "wave": "-w"}),
     r"HELLO: field 'wave' must be a label of letters, digits, '\.', '_' and '-' \(at most 64\), got '-w'"),
    (lambda: P.Hello.decode({"capture_id": "x", "identities": [{"name": "sda", "size": 4096, "head": "xyz"}]}),
     r"HELLO identities\[0\]: field 'head' must be a sha256 in hex, got 'xyz'"),
    (lambda: P.Hello.decode({"capture_id": "x", "identities": [{"name": "sda"}]}),
     r"HELLO identities\[0\]: field 'size' is missing"),
    (lambda: P.Hello.decode({"capture_id": "x", "unfinished_of": [{"name": "sda", "size": 1}] * (P.MAX_DISKS + 1)}),
     rf"HELLO: field 'unfinished_of' must be a list of at most {P.MAX_DISKS} objects"),
    (lambda: P.DiskHeader.decode({"name": "sda", "size": 4096, "resume_from": 8192}),
     r"DISK: field 'resume_from' must be an integer from 0 to 4096, got 8192"),
    (lambda: P.DiskHeader.decode({"name": "x" * 4097, "size": 4096}),
     r"DISK: field 'name' must be a string \(at most 4096 characters\)"),
    (lambda: P.ServerLoad.decode({"free_bytes": 1, "running": 1 << 21}),
     r"READY load: field 'running' must be an integer from 0 to 1048576, got 2097152"),
    (lambda: P.decode_held({"sda": {"size": 1 << 20, "block_size": 65536,
                                    "segments": [[131072, HEAD], [65536, HEAD]]}}),
     r"READY held disk 'sda': segment ends must increase within the disk's 1048576 bytes"),
    (lambda: P.decode_held({"sda": {"size": 1 << 20, "block_size": 65536, "segments": [[65536, "zz"]]}}),
     r"READY held disk 'sda': field 'segments' must be a list of \[end: an integer from 1 to 1125899906842624, "
     r"digest: 64 hex digits\], got \[\[65536, 'zz'\]\]"),
    (lambda: P.decode_unfinished({"cap": {"disks": [{"name": "sda", "size": 4096, "held": 8192}]}}),
     r"READY unfinished capture 'cap' disk 0: field 'held' must be an integer from 0 to 4096, got 8192"),
    (lambda: P.Abort.decode({"reason": 5}), r"ABORT: field 'reason' must be a string"),
])
def test_a_refusal_names_the_record_the_field_and_its_declared_limit(decode, match):
    with pytest.raises(P.ProtocolError, match=match):
        decode()


def test_a_field_at_its_default_is_not_written():
    assert P.DiskHeader(name="sda", size=4096).to_json() == {"name": "sda", "size": 4096}
    assert P.Hello(capture_id=None, probe=True).to_json() == {"probe": True}
    assert P.DiskEnd(b"\x01" * 32, bytes_read=5).stats() == {"bytes_read": 5}
    assert json.loads(P.Abort().encode()[P.FRAME.size:]) == {}


# What the hand-written to_json of the previous release wrote (every key, nulls included), byte
# for byte as its encode_json framed it: a receiver of this release reads it the same.
OLD_HELLO = (b'{"agent_version":"1.0","capture_id":"c-1","disks":["sda"],"format":"raw",'
             b'"identities":[{"head":"' + HEAD.encode() + b'","name":"sda","serial":"WD-WCC4N1234567","size":1073741824,'
             b'"wwid":"naa.6001"}],"resume":true,"source":{"hostname":"h"},"wave":"w1"}')
OLD_DISK = (b'{"block_size":4096,"codec":"zstd:1","data_bytes_estimate":5,"logical_sector_size":512,'
            b'"mode":"nonzero","name":"sda","physical_sector_size":null,"resume_from":4096,'
            b'"restart_reason":"x","size":1073741824,"source":{}}')
OLD_READY = (b'{"capture_id": null, "event": "ready", "held": {"sda": {"block_size": 65536, "complete": true, '
             b'"digest": "' + b"cd" * 32 + b'", "mode": "used", "segments": [[65536, "' + HEAD.encode() + b'"]], '
             b'"size": 1048576}}, "path": "/srv", "protocol": 2, "receiver_version": "1"}\n')


def test_the_previous_releases_bodies_decode_the_same():
    hello = P.Hello.decode(P.loads_object(OLD_HELLO, "HELLO"))
    assert hello == P.Hello(capture_id="c-1", agent_version="1.0", format="raw", source={"hostname": "h"},
                            disks=("sda",), resume=True, wave="w1",
                            identities=(P.DiskIdentity("sda", 1 << 30, "wd-wcc4n1234567", "naa.6001", HEAD),))
    disk = P.DiskHeader.decode(P.loads_object(OLD_DISK, "DISK"))
    assert disk == P.DiskHeader(name="sda", size=1 << 30, block_size=4096, logical_sector_size=512,
                                mode="nonzero", codec="zstd:1", data_bytes_estimate=5, resume_from=4096,
                                restart_reason="x")
    ready = P.Reply.decode(OLD_READY)
    assert (ready.event, ready.capture_id, ready.protocol) == (P.Event.READY, None, 2)
    held = P.decode_held(ready.held)["sda"]
    assert held == P.HeldDisk(name="sda", size=1 << 20, block_size=65536, mode="used",
                              segments=(P.Segment(65536, HEAD),), complete=True, digest="cd" * 32)
    assert held.held == 65536
    # the transport's pump queues each reply as the JSON object it is
    assert P.parse_reply(OLD_READY) == json.loads(OLD_READY)
    # and what this release writes, an older reader (which takes a missing key as its default) reads
    # back to the same model
    assert P.Hello.decode(json.loads(json.dumps(hello.to_json()))) == hello
    assert P.decode_held({"sda": json.loads(json.dumps(held.to_json()))})["sda"] == held


def test_decode_fields_falls_back_to_msgspecs_words_for_a_shape_it_cannot_name():
    with pytest.raises(records.RecordError, match="is not a JSON object"):
        records.decode_fields([1], P.DiskHeader, "DISK")


def test_a_decoded_model_writes_every_field_again():
    """msgspec.convert leaves fields the document lacked (plain defaults) off the instance, and
    to_builtins would then leave them out: a manifest read and written again lost keys."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Inner:
        q: int = 0

    @dataclasses.dataclass(frozen=True)
    class Outer:
        x: int
        y: int = 3
        inner: tuple[Inner, ...] = ()
        by_name: dict[str, Inner] = dataclasses.field(default_factory=dict)

    got = records.encode(records.decode({"x": 1, "inner": [{}], "by_name": {"a": {}}}, Outer, "doc"))
    assert json.loads(json.dumps(got)) == {"x": 1, "y": 3, "inner": [{"q": 0}], "by_name": {"a": {"q": 0}}}
