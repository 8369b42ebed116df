"""Build protocol streams by hand, to feed the real receiver good and bad input."""

from agent import protocol as P


def disk_records(data: bytes, block_size=P.DEFAULT_BLOCK_SIZE, compress=None) -> tuple[list[bytes], bytes]:
    tree = P.BlockTree(len(data), block_size)
    out = []
    for ext in P.split_extents(data, 0, block_size):
        if ext.zero:
            out.append(P.encode_zero(ext.offset, ext.length))
            tree.add_zero(ext.offset, ext.length)
        else:
            raw = bytes(ext.data)
            payload = raw if compress is None else compress(raw)
            codec = P.CODEC_NONE if compress is None else P.CODEC_ZSTD
            out.append(P.encode_data(ext.offset, ext.length, codec, P.record_digest(ext.digests), payload))
            tree.add_digests(ext.offset, ext.length, ext.digests)
    return out, tree.digest()


def capture_stream(capture_id: str, disks: dict[str, bytes], compress=None, fmt="qcow2",
                   data_estimates: dict[str, int] | None = None) -> bytes:
    """A whole capture stream, written by the agent's own StreamWriter."""
    parts: list[bytes] = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=capture_id, format=fmt, agent_version="test", disks=tuple(disks)))
    for name, data in disks.items():
        w.disk(P.DiskHeader(name=name, size=len(data), block_size=P.DEFAULT_BLOCK_SIZE, mode="nonzero",
                            data_bytes_estimate=(data_estimates or {}).get(name)))
        recs, digest = disk_records(data, compress=compress)
        parts += recs
        w.end(P.DiskEnd(digest, bytes_read=len(data)))
    w.finish()
    return b"".join(parts)
