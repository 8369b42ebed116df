"""Seeded, bounded fuzzing of the real receiver (in process, on a real directory).

Two generators: mutations of valid capture and probe streams (flipped, cut, spliced, with a
record's JSON replaced), and streams built record by record from hostile field values. For every
case: no traceback (an unexpected exception would surface as the `internal` error code), at most
one error reply and it is the last, nothing written outside the root, bounded memory.
"""

import hashlib
import io
import json
import os
import resource
import shutil
import tempfile
import threading
import time
import tracemalloc

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings, strategies as st

from agent import protocol as P
from agent.server.receive.receiver import Receiver

BS = 4096
MiB = 1 << 20
MEM_LIMIT = 200 * MiB
CASES = 1500          # per generator: 3000 in all
RESUME_CASES = 400     # a held capture, then a stream that resumes it (two receiver runs each)
CASE_SECONDS = 60
SETTLE_SECONDS = 10
STATS = {"cases": 0, "peak": 0, "codes": {}, "seconds": 0.0, "rss_start": 0, "rss_max": 0, "resume_codes": {}}


def rss() -> int:
    """This process's resident memory now (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _disk(seed: int) -> bytes:
    rnd = bytearray(os.urandom(4 * BS)) if seed else bytearray(b"coldclone" * 1821)[:4 * BS]
    return bytes(rnd) + bytes(4 * BS) + b"\x01" * BS + bytes(3 * BS)


def _stream(probe=False, fmt="raw", zstd=False) -> bytes:
    data = _disk(0)
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=None if probe else "fz", probe=probe, format=fmt, disks=("sda",),
                    source={"hostname": "h", "facts": [1, 2.5, None, {"a": "b"}]}))
    w.disk(P.DiskHeader(name="sda", size=len(data), block_size=BS, data_bytes_estimate=len(data)))
    tree = P.BlockTree(len(data), BS)
    c = zstandard.ZstdCompressor(level=1)
    for ext in P.split_extents(data, 0, BS):
        if ext.zero:
            parts.append(P.encode_zero(ext.offset, ext.length))
            tree.add_zero(ext.offset, ext.length)
        else:
            raw = bytes(ext.data)
            payload, codec = (c.compress(raw), P.CODEC_ZSTD) if zstd else (raw, P.CODEC_NONE)
            parts.append(P.encode_data(ext.offset, ext.length, codec, P.record_digest(ext.digests), payload))
            tree.add_digests(ext.offset, ext.length, ext.digests)
    if not probe:
        w.end(P.DiskEnd(tree.digest(), bytes_read=len(data)))
    w.finish()
    return b"".join(parts)


BASES = [_stream(), _stream(zstd=True), _stream(probe=True), _stream(fmt="qcow2", zstd=True)]


def settled() -> None:
    """Wait until every thread a case started has wholly exited, as the kernel lists the process's
    threads (the interpreter frees a thread's state after join() returns, so join is not enough).

    tracemalloc.start() and stop() swap the interpreter's allocator hooks, and an exiting thread
    frees its state through those hooks without holding the GIL: on CPython < 3.12.9 (gh-128679,
    gh-131566) the two race and the process segfaults. CI's run of stop 27 did so, and a core
    dump here showed an exiting thread in tracemalloc's free hook with a NULL context. So this
    module starts and stops tracemalloc only while no thread of its cases exists. A thread left
    running is a leak of the receiver's and fails the case."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (left := set(os.listdir("/proc/self/task")) - STATS["threads"]) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not left, f"{len(left)} threads of the receiver still run {SETTLE_SECONDS} s after its answer"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    STATS["rss_start"] = rss()
    STATS["fds"] = len(os.listdir("/proc/self/fd"))
    STATS["threads"] = set(os.listdir("/proc/self/task"))
    # tmpfs where there is one: thousands of failure.json fsyncs on a real disk would measure the disk.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    box = tempfile.mkdtemp(prefix="coldclone-fuzz-", dir=shm) if shm else str(tmp_path_factory.mktemp("fuzz"))
    os.mkdir(os.path.join(box, "root"))
    with open(os.path.join(box, "sentinel"), "w") as f:
        f.write("untouched")
    yield str(box)
    shutil.rmtree(box, ignore_errors=True)
    print(f"\nreceiver fuzz: {STATS['cases']} cases in {STATS['seconds']:.1f} s, peak traced memory per case "
          f"{STATS['peak'] / MiB:.1f} MiB, RSS {STATS['rss_start'] / MiB:.0f} MiB before, at most {STATS['rss_max'] / MiB:.0f} "
          f"MiB after a case (peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB), "
          f"outcomes {dict(sorted(STATS['codes'].items()))}, resumes {dict(sorted(STATS['resume_codes'].items()))}")


def _receive(root: str, blob: bytes, out: io.BytesIO) -> int:
    """One stream through the receiver, which must answer within CASE_SECONDS (a resume of a disk
    held whole once waited forever for a write that never came)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(Receiver(root, out).run(io.BytesIO(blob))), daemon=True)
    worker.start()
    worker.join(CASE_SECONDS)
    assert result, f"the receiver did not finish a {len(blob)}-byte stream within {CASE_SECONDS} s (hung)"
    return result[0]


def run_case(box: str, blob: bytes, keep: bool = False) -> dict:
    """One hostile stream; the checks every case must pass. keep: leave the root as it is (the
    caller inspects it, then wipes it)."""
    root = os.path.join(box, "root")
    out = io.BytesIO()
    t0 = time.monotonic()
    settled()
    tracemalloc.start()
    try:
        rc = _receive(root, blob, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        settled()
        tracemalloc.stop()
    STATS["seconds"] += time.monotonic() - t0
    STATS["cases"] += 1
    STATS["peak"] = max(STATS["peak"], peak)
    assert peak < MEM_LIMIT, f"{peak >> 20} MiB traced for one stream"
    now = rss()
    STATS["rss_max"] = max(STATS["rss_max"], now)
    assert now - STATS["rss_start"] < MEM_LIMIT, f"RSS grew from {STATS['rss_start'] >> 20} to {now >> 20} MiB"
    assert len(os.listdir("/proc/self/fd")) <= STATS["fds"] + 2, "file descriptors leaked"
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(isinstance(r, dict) and isinstance(r.get("event"), str) for r in replies), replies
    errors = [r for r in replies if r["event"] == "error"]
    assert rc in (0, 1)
    if rc == 1:
        assert len(errors) == 1 and replies[-1] is errors[0], replies
        assert errors[0]["code"] != "internal", errors[0]["message"]
        key = errors[0]["code"]
    else:
        assert not errors, replies
        key = replies[-1]["event"]
    STATS["codes"][key] = STATS["codes"].get(key, 0) + 1
    # Nothing outside the root; inside it only capture directories and their own files.
    assert sorted(os.listdir(box)) == ["root", "sentinel"]
    assert open(os.path.join(box, "sentinel")).read() == "untouched"
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            assert not os.path.islink(p), p
            assert os.path.realpath(p).startswith(os.path.realpath(root) + os.sep), p
    if not keep:
        wipe(root)
    return errors[0] if errors else replies[-1]


def wipe(root: str) -> None:
    for name in os.listdir(root):
        shutil.rmtree(os.path.join(root, name))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
KEYS = ["capture_id", "agent_version", "format", "source", "disks", "probe", "estimate", "name", "size",
        "block_size", "logical_sector_size", "physical_sector_size", "mode", "codec", "data_bytes_estimate",
        "bytes_read", "elapsed", "reason"]
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values | st.sampled_from(
    ["fz", "sda", "qcow2", "raw", "manifest.json", "../x", 4096, 65536, 1 << 62, 1 << 64, -1, 0, True]), max_size=8)


@st.composite
def mutated(draw):
    blob = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "splice", "json"]))
        pos = draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            end = draw(st.integers(pos, len(blob)))
            blob[pos:pos] = blob[pos:end][:256]
        elif op == "json":
            kind = draw(st.sampled_from([P.T_HELLO, P.T_DISK, P.T_FINISH, P.T_ABORT]))
            blob[pos:pos] = P.frame(kind, json.dumps(draw(json_objects)).encode())
    return bytes(blob)


u64 = st.one_of(st.integers(0, 1 << 20), st.sampled_from([0, BS, 1 << 62, (1 << 64) - 1, (1 << 63)]))
u32 = st.one_of(st.integers(0, 1 << 20), st.sampled_from([0, BS, (1 << 32) - 1]))


@st.composite
def built(draw):
    parts = [P.preamble() if draw(st.integers(0, 20)) else
             P.PREAMBLE.pack(P.MAGIC, P.VERSION, draw(st.integers(0, 0xFFFF)))]
    hello = draw(json_objects)
    if draw(st.booleans()):
        hello.update(capture_id="fz", format=draw(st.sampled_from(["raw", "qcow2", "vmdk"])))
    if draw(st.integers(0, 3)) == 0:
        hello["probe"] = True
    parts.append(P.frame(P.T_HELLO, json.dumps(hello).encode()))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["disk", "data", "zero", "end", "finish", "abort", "raw"]))
        if kind == "disk":
            d = draw(json_objects)
            if draw(st.booleans()):
                d.update(name="sda", size=draw(u64), block_size=draw(st.sampled_from([512, BS, 3000, 1 << 30])))
            parts.append(P.frame(P.T_DISK, json.dumps(d).encode()))
        elif kind == "data":
            payload = draw(st.binary(max_size=64))
            if draw(st.booleans()):
                payload = zstandard.ZstdCompressor().compress(bytes(draw(st.integers(0, 2 * BS))))
            parts.append(P.encode_data(draw(u64), draw(u32), draw(st.integers(0, 2)), draw(st.binary(min_size=32, max_size=32)),
                                       payload))
        elif kind == "zero":
            parts.append(P.encode_zero(draw(u64), draw(u64)))
        elif kind == "end":
            parts.append(P.frame(P.T_END, draw(st.binary(max_size=40)) + json.dumps(draw(json_objects)).encode()))
        elif kind == "finish":
            parts.append(P.encode_finish())
        elif kind == "abort":
            parts.append(P.frame(P.T_ABORT, json.dumps(draw(json_objects)).encode()))
        else:
            parts.append(P.FRAME.pack(draw(st.integers(0, 9)), draw(u32)) + draw(st.binary(max_size=32)))
    return b"".join(parts)


# ---- resumes (issue 19): a capture held by one server, then a stream that tries to continue,
# restart, take over or hang it. Whatever it sends: an answer in time, and a refusal changes nothing.
HELD = _disk(1)
HELD_TREE = P.BlockTree(len(HELD), BS)
HELD_RECORDS = []
for _ext in P.split_extents(HELD, 0, BS):
    if _ext.zero:
        HELD_RECORDS.append((_ext.offset, P.encode_zero(_ext.offset, _ext.length)))
        HELD_TREE.add_zero(_ext.offset, _ext.length)
    else:
        HELD_RECORDS.append((_ext.offset, P.encode_data(_ext.offset, _ext.length, P.CODEC_NONE,
                                                         P.record_digest(_ext.digests), bytes(_ext.data))))
        HELD_TREE.add_digests(_ext.offset, _ext.length, _ext.digests)
HELD_DIGEST = HELD_TREE.digest()
HEAD = hashlib.sha256(HELD[:P.DiskIdentity.HEAD_BYTES]).hexdigest()
IDENTITIES = {
    "same": lambda serial: P.DiskIdentity("sda", len(HELD), serial, "", HEAD),
    "other-head": lambda serial: P.DiskIdentity("sda", len(HELD), serial, "", hashlib.sha256(b"x").hexdigest()),
    "no-head": lambda serial: P.DiskIdentity("sda", len(HELD), serial, ""),
    "zero-head": lambda serial: P.DiskIdentity("sda", len(HELD), serial, "", P.DiskIdentity.zero_head(len(HELD))),
    "other-serial": lambda serial: P.DiskIdentity("sda", len(HELD), "other", "", HEAD),
    "other-size": lambda serial: P.DiskIdentity("sda", len(HELD) + BS, serial, "", HEAD),
    "none": None,
}


def _held_capture(serial: str, n: int, fmt: str) -> bytes:
    """The first server's capture, cut after n records (n = all: every byte held, no END)."""
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id="fz", format=fmt, disks=("sda",), resume=True,
                    identities=(IDENTITIES["same"](serial),)))
    w.disk(P.DiskHeader(name="sda", size=len(HELD), block_size=BS, mode="nonzero",
                        source={"serial": serial, "head": HEAD}))
    return b"".join(parts) + b"".join(r for _, r in HELD_RECORDS[:n])


@st.composite
def resumes(draw):
    serial = draw(st.sampled_from(["", "FZ-0001"]))
    fmt = draw(st.sampled_from(["raw", "qcow2"]))
    n = draw(st.sampled_from([1, len(HELD_RECORDS) // 2, len(HELD_RECORDS)]))
    who = draw(st.sampled_from(["same"] * 6 + sorted(IDENTITIES)))   # half of them the server itself
    ident = IDENTITIES[who]
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id="fz", format=fmt, disks=("sda",), resume=True,
                    identities=() if ident is None else (ident(serial),)))
    held_end = HELD_RECORDS[n][0] if n < len(HELD_RECORDS) else len(HELD)
    start = draw(st.sampled_from([0, held_end, len(HELD), BS]))
    source = draw(st.sampled_from([{"serial": serial, "head": HEAD}] * 4 + [{"serial": "other", "head": HEAD}, {}]))
    w.disk(P.DiskHeader(name="sda", size=len(HELD), block_size=BS, mode="nonzero", source=source,
                        resume_from=start, restart_reason=None if start else "fuzz"))
    parts += [r for off, r in HELD_RECORDS if off >= start]
    end = draw(st.sampled_from(["end", "bad-end", "abort", "cut"]))
    if end == "end":
        w.end(P.DiskEnd(HELD_DIGEST))
        w.finish()
    elif end == "bad-end":
        w.end(P.DiskEnd(bytes(32)))
    elif end == "abort":
        w.abort("fuzz")
    return _held_capture(serial, n, fmt), b"".join(parts)


def snapshot(root: str) -> dict[str, bytes]:
    """The held capture's files (the lock and the failure record aside)."""
    d = os.path.join(root, "fz.partial")
    if not os.path.isdir(d):
        return {}
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))
            if n not in (".coldclone-receive.lock", "failure.json")}


FUZZ = settings(max_examples=CASES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(blob=mutated())
def test_fuzz_mutated_streams(sandbox, blob):
    run_case(sandbox, blob)


@FUZZ
@given(blob=built())
def test_fuzz_built_streams(sandbox, blob):
    run_case(sandbox, blob)


@settings(max_examples=RESUME_CASES, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@given(case=resumes())
def test_fuzz_resumes_of_a_held_capture(sandbox, case):
    held, blob = case
    root = os.path.join(sandbox, "root")
    first = run_case(sandbox, held, keep=True)
    assert first["code"] == "protocol", first     # cut: held for a resume
    before = snapshot(root)
    try:
        last = run_case(sandbox, blob, keep=True)
        if last.get("code") == "refused":
            # not proven the same server: every held byte as it was
            assert snapshot(root) == before, last
        STATS["resume_codes"][last.get("code") or last["event"]] = \
            STATS["resume_codes"].get(last.get("code") or last["event"], 0) + 1
    finally:
        wipe(root)


def test_the_bases_are_accepted(sandbox):
    """The unmutated streams complete (so the mutations start from streams that get far)."""
    for blob in BASES:
        out = io.BytesIO()
        assert Receiver(os.path.join(sandbox, "root"), out).run(io.BytesIO(blob)) == 0, out.getvalue()
        for name in os.listdir(os.path.join(sandbox, "root")):
            shutil.rmtree(os.path.join(sandbox, "root", name))
