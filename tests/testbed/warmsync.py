"""A first warm sync of a disk into a receiver root, for tests that need a warm capture to cut over.

A first sync holds nothing yet, so it is a plain stream with HELLO.warm: written here with the
wire's own functions, whole disk, zero blocks as ZERO, the disk's identity as the agent gives it.
tests/integration/test_sync.py runs the real `coldclone sync` file over sshd."""

from __future__ import annotations

import os

from agent import protocol as P
from agent.source.capture.source import probe
from tests.testbed.receiver import run_receiver

MiB = 1 << 20


def warm_stream(capture_id: str, dev: str) -> bytes:
    src = probe(dev).read_head()
    parts = [P.preamble(), P.Hello(capture_id=capture_id, agent_version="test", format="qcow2",
                                   source={"hostname": "warm-test"}, disks=(src.name,), warm=True,
                                   identities=(src.identity(),)).encode(),
             P.DiskHeader(name=src.name, size=src.size, block_size=P.DEFAULT_BLOCK_SIZE,
                          logical_sector_size=src.logical_sector_size,
                          physical_sector_size=src.physical_sector_size, mode="nonzero", codec="zlib",
                          source=src.facts()).encode()]
    tree = P.BlockTree(src.size, P.DEFAULT_BLOCK_SIZE)
    fd = os.open(dev, os.O_RDONLY)
    try:
        for off in range(0, src.size, 4 * MiB):
            buf = os.pread(fd, min(4 * MiB, src.size - off), off)
            for ext in P.split_extents(buf, off, P.DEFAULT_BLOCK_SIZE):
                if ext.zero:
                    parts.append(P.encode_zero(ext.offset, ext.length))
                    tree.add_zero(ext.offset, ext.length)
                else:
                    codec, payload = P.zlib_payload(ext.data)
                    parts.append(P.encode_data(ext.offset, ext.length, codec, P.record_digest(ext.digests),
                                               payload))
                    tree.add_digests(ext.offset, ext.length, ext.digests)
    finally:
        os.close(fd)
    parts.append(P.DiskEnd(tree.digest(), bytes_read=src.size).encode())
    parts.append(P.encode_finish())
    return b"".join(parts)


def warm_sync(root: str, dev: str, capture_id: str = "warm") -> str:
    res = run_receiver(root, warm_stream(capture_id, dev), timeout=120)
    assert res.returncode == 0, (res.replies, res.stderr)
    return capture_id
