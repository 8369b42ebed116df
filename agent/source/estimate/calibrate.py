"""The calibration probe: a few seconds of real records to the real target, then nothing left there.

The agent opens a receiver session like a capture does, but its HELLO says
`"probe": true` (docs/protocol.md, "Calibration probe"). It then sends DATA
records built from the source's own sampled blocks (already compressed, so
the agent's CPU is not what is measured) for a bounded time and FINISHes.
The receiver checks every digest and writes the bytes into an unnamed file on
the filesystem the images would go to, fsyncs it, reads it back and hashes it,
and reports its timings; the file disappears when it closes. So the probe
measures the whole path after the agent's CPU: link, SSH, the server's CPU
and its disk, and how fast it verifies afterwards.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from ... import __version__
from ... import protocol as P
from ...estimate_model import ProbeResult
from ..capture.session import _Replies  # the same reply handling as a capture
from ..capture.stream import StreamOptions, _Codec, _process
from ...errors import ColdcloneError, ServerError

log = logging.getLogger("coldclone.estimate")

# The probe's disk: large enough for any probe, sparse on the server (nothing is allocated
# but what is written, and that goes away with the unnamed file).
PROBE_DISK_SIZE = 1 << 40


def _fill(buffers: list, block_size: int) -> list:
    """Something to send when the samples found no data (an empty disk): incompressible blocks."""
    if any(b.count(0) != len(b) for b in buffers[:64]):
        return buffers
    return buffers + [os.urandom(1 << 20) for _ in range(8)]


def _chunks(buffers: list, chunk_size: int) -> list:
    """Samples joined into chunks of the capture's size: per-chunk costs (pool, records, sends)
    then weigh as much as in the capture (on a slow CPU they are most of the cost)."""
    out, cur, n = [], [], 0
    for b in buffers:
        cur.append(b)
        n += len(b)
        if n >= chunk_size:
            out.append(b"".join(cur))
            cur, n = [], 0
    if cur:
        out.append(b"".join(cur))
    return out


def cpu_now() -> float:
    """CPU seconds of this process and its waited-for children (a local receiver)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def probe_target(connect: Callable, buffers: list, seconds: float, opts=None) -> ProbeResult:
    """Run the sampled `buffers` through the capture's processing and send them for `seconds`; measure.

    The records are made exactly as the capture makes them (agent.source.capture.stream: zero
    test, sha256, zstd in a pool of opts.workers threads), so the probe measures this
    machine's CPU, the link and the server together, on this disk's own content.
    """
    from concurrent.futures import ThreadPoolExecutor

    opts = opts or StreamOptions()
    buffers = _chunks(_fill([b for b in buffers if len(b) % opts.block_size == 0], opts.block_size),
                      opts.chunk_size)
    codec = _Codec(opts.codec, opts.level)
    c0 = cpu_now()
    conn = connect()
    replies = _Replies(conn)
    writer = P.StreamWriter(conn.send)
    try:
        writer.hello(P.Hello(capture_id=None, agent_version=__version__, format=P.ImageFormat.RAW, probe=True,
                             disks=("probe",)))
        ready = replies.wait_for((P.Event.READY,), timeout=60)
        if not ready.probe:
            # A receiver from before the probe existed made a real capture directory: abort it
            # (it then removes its images) and estimate from the table instead.
            writer.abort("calibration probe not supported")
            conn.close_write()
            replies.drain(timeout=10)
            raise ServerError("the conversion server's coldclone-receive predates calibration probes; "
                              "upgrade it there, or skip calibration (--calibrate 0)", code="no_probe")
        writer.disk(P.DiskHeader(
            name="probe", size=PROBE_DISK_SIZE, block_size=opts.block_size, logical_sector_size=512,
            physical_sector_size=512, mode=opts.mode, codec=opts.codec_label()))
        t0 = time.monotonic()
        off = sent = data = 0
        i = 0
        inflight = []
        with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="cc-probe") as pool:
            while True:
                # Keep the pool as busy as the capture keeps it, and stop feeding when time is up.
                while len(inflight) < opts.workers * 4 and time.monotonic() - t0 < seconds:
                    buf = buffers[i % len(buffers)]
                    inflight.append(pool.submit(_process, buf, off, opts, codec))
                    off += len(buf)
                    i += 1
                if not inflight:
                    break
                ch = inflight.pop(0).result()
                replies.poll()
                conn.send(ch.wire)
                sent += len(ch.wire)
                data += ch.data_bytes
        disk_bytes = off
        writer.finish()
        conn.close_write()
        done = replies.wait_for((P.Event.PROBE,), timeout=max(60.0, 20 * seconds))
        t1 = time.monotonic()
    except ColdcloneError:
        raise
    except (OSError, ValueError) as e:
        raise replies.after_send_failure(e) from None
    finally:
        conn.close()
    cpu = cpu_now() - c0
    readback_s = done.readback_seconds or 0.0
    # The receiver's disk waits are taken out of the link's time: in a capture, writeback runs
    # alongside the transfer (page cache), so the disk is a stage of its own, not a pause in it.
    sync_s = done.sync_seconds or 0.0
    elapsed = max(t1 - t0 - readback_s - sync_s, 1e-6)
    rb_bytes = done.readback_bytes or 0
    result = ProbeResult(
        disk_bytes=disk_bytes, wire_bytes=sent, data_bytes=data, seconds=elapsed, rate=sent / elapsed,
        disk_rate=disk_bytes / elapsed,
        readback_rate=rb_bytes / readback_s if readback_s > 0 and rb_bytes > (1 << 20) else None,
        receiver_seconds=done.seconds or 0.0, cpu_seconds=cpu, sync_seconds=sync_s,
        write_rate=data / sync_s if sync_s > 0.01 and data else None)
    log.info("calibration probe: %d wire bytes (%d of disk) in %.2f s = %.1f MB/s on the wire",
             sent, disk_bytes, elapsed, result.rate / 1e6)
    return result
