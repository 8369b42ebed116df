"""`coldclone-receive`: turn one capture stream into verified images and a manifest.

One record loop (Receiver) reads the stream and hands each record, decoded
into its typed model, to a sink: a CaptureSink for a capture, a ProbeSink for
a calibration probe. Both check and write DATA/ZERO records the same way
(_Sink.extent): every DATA record is decompressed (bounded) and checked
against its digest before it is written; ZERO records leave holes.

A capture: at END the whole-disk digest is checked twice (as received, and
read back from the file), the raw file becomes qcow2 and `qemu-img compare`
proves the two equal. Only after every disk passed and manifest.json is on
disk is the capture directory renamed from `<id>.partial` to `<id>`: that
rename is the single "complete" mark. Any failure, whatever raised it, goes
through one handler: it leaves `<id>.partial/failure.json` saying exactly what
failed, removes the half-written images and temp files, and answers the agent
with an error reply. No traceback ever reaches the agent.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from .. import __version__
from .. import protocol as P
from ..errors import ColdcloneError, ServerError
from ..inspect.report import ReadinessReport
from . import image
from .store import FAILURE, MANIFEST, CaptureDir, Store, converted_image_name, resolve_root, validate_name

log = logging.getLogger("coldclone.receive")

PROBE_SYNC_BYTES = 16 << 20


class SessionEnded(Exception):
    """The agent's session is over (idle timeout, hangup, parent gone): stop, record why."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _human(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


@dataclass
class DiskState:
    header: P.DiskHeader
    fd: int
    raw_name: str
    tree: P.BlockTree
    started: float = field(default_factory=time.monotonic)
    counts: dict = field(default_factory=lambda: dict(
        data_bytes=0, zero_bytes=0, payload_bytes=0, wire_bytes=0, data_records=0, zero_records=0))

    @property
    def name(self) -> str:
        return self.header.name


class _Sink:
    """What both sinks share: disk bookkeeping and the checking and writing of DATA/ZERO records."""

    def __init__(self, rx: "Receiver"):
        self.rx = rx
        self.disk: DiskState | None = None
        self.dctx = zstandard.ZstdDecompressor()

    def where(self) -> str:
        return f" (disk {self.disk.name} at byte {self.disk.tree.pos})" if self.disk else ""

    def open_disk(self, h: P.DiskHeader) -> int:
        raise NotImplementedError

    def disk_header(self, h: P.DiskHeader) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"DISK {h.name!r} before END of disk {self.disk.name}")
        validate_name(h.name, "disk name")
        fd = self.open_disk(h)
        self.disk = DiskState(h, fd, h.name + ".raw", P.BlockTree(h.size, h.block_size))
        log.info("disk %s: %d bytes", h.name, h.size)

    def _payload(self, rec: P.Record, d: DiskState) -> bytes:
        """The record's bytes, decompressed with a hard cap: never more than its declared length + 1."""
        if rec.codec != P.CODEC_ZSTD:
            return rec.payload

        def corrupt(why: str) -> ServerError:
            return ServerError(
                f"DATA record of disk {d.name} at byte {rec.offset} ({rec.length} bytes) cannot be "
                f"decompressed ({why}): corrupted in transit; nothing was marked complete, capture again",
                code="corrupt")

        try:
            declared = zstandard.get_frame_parameters(rec.payload).content_size
        except zstandard.ZstdError as e:
            raise corrupt(str(e)) from None
        # A frame header may declare any size (a 64 KiB frame saying 2 GiB): check it against the
        # record before decompressing anything.
        if declared not in (0, zstandard.CONTENTSIZE_UNKNOWN) and declared != rec.length:
            raise corrupt(f"its zstd frame declares {declared} bytes") from None
        out = bytearray()
        try:
            with self.dctx.stream_reader(rec.payload, read_across_frames=False) as r:
                while len(out) <= rec.length:
                    chunk = r.read(rec.length + 1 - len(out))
                    if not chunk:
                        break
                    out += chunk
        except zstandard.ZstdError as e:
            raise corrupt(str(e)) from None
        if len(out) > rec.length:
            raise corrupt(f"it holds more than the {rec.length} bytes the record declares")
        return bytes(out)

    def extent(self, rec: P.Record) -> None:
        d = self.disk
        if d is None:
            raise P.ProtocolError(f"{rec.name} record outside a disk")
        c = d.counts
        c["wire_bytes"] += rec.wire_bytes
        if rec.type == P.T_ZERO:
            d.tree.add_zero(rec.offset, rec.length)  # checks order and alignment
            c["zero_bytes"] += rec.length
            c["zero_records"] += 1
            return
        data = self._payload(rec, d)
        if len(data) != rec.length:
            raise ServerError(
                f"DATA record of disk {d.name} at byte {rec.offset} holds {len(data)} bytes, "
                f"its header says {rec.length}: corrupted in transit", code="corrupt")
        digests = P.block_digests(data, d.header.block_size)
        if P.record_digest(digests) != rec.digest:
            raise ServerError(
                f"digest mismatch in DATA record of disk {d.name} at byte {rec.offset} "
                f"({rec.length} bytes): the data was corrupted in transit or in the agent's memory; "
                f"nothing was marked complete, capture again", code="corrupt")
        d.tree.add_digests(rec.offset, rec.length, digests)
        mv = memoryview(data)
        off, done = rec.offset, 0
        while done < len(mv):
            done += os.pwrite(d.fd, mv[done:], off + done)
        c["data_bytes"] += rec.length
        c["payload_bytes"] += len(rec.payload)
        c["data_records"] += 1
        self.written(d)

    def written(self, d: DiskState) -> None:
        """After each DATA record (the probe syncs as it goes)."""

    def end(self, end: P.DiskEnd, wire_bytes: int) -> None:
        raise P.ProtocolError("END record in a calibration probe")

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self, reason: str) -> int:
        raise NotImplementedError

    def close_disk(self) -> None:
        if self.disk is not None:
            try:
                os.close(self.disk.fd)
            except OSError:
                pass
            self.disk = None

    def fail(self, code: str, message: str) -> str | None:
        """Clean up after a failure; the path to name in the error reply."""
        self.close_disk()
        return None

    def close(self) -> None:
        """Every descriptor let go, whatever happened (the receiver runs once per process, but
        in-process callers such as the tests run many)."""
        self.close_disk()


class CaptureSink(_Sink):
    def __init__(self, rx: "Receiver", hello: P.Hello):
        super().__init__(rx)
        if hello.format not in P.ImageFormat.ALL:
            raise ServerError(f"refused image format {hello.format!r}: choose qcow2 or raw", code="usage")
        self.hello = hello
        self.disks: list[dict] = []          # manifest entries, one per verified disk
        self.ends: list[P.DiskEnd] = []     # and the agent's END for each
        self.files: list[str] = []
        self.store = Store(resolve_root(rx.forced_root, rx.requested_root))
        try:
            self.cap: CaptureDir = self.store.make_capture_dir(hello.capture_id)
        except BaseException:
            self.store.close()
            raise
        log.info("capture %s into %s", self.cap.capture_id, self.cap.path)
        rx.say(P.Reply(P.Event.READY, capture_id=self.cap.capture_id, path=self.cap.path,
                       receiver_version=__version__, protocol=P.VERSION))

    def open_disk(self, h: P.DiskHeader) -> int:
        if any(d["name"] == h.name for d in self.disks):
            raise ServerError(f"refused: disk {h.name} sent twice in one capture", code="bad_name")
        self.preflight(h)
        fd = self.cap.create(h.name + ".raw")
        self.files.append(h.name + ".raw")
        os.ftruncate(fd, h.size)
        return fd

    def preflight(self, h: P.DiskHeader) -> None:
        """Refuse a disk up front when its data cannot fit, instead of failing at 90 %."""
        if h.data_bytes_estimate is None:
            return   # an agent that sends no estimate (older ones): the writes will tell
        raw = h.data_bytes_estimate
        # During conversion the raw data and the qcow2 (at most as large, with its metadata) coexist.
        img = raw + raw // 64 + (1 << 20) if self.hello.format == P.ImageFormat.QCOW2 else 0
        st = os.statvfs(self.cap.path)
        free = st.f_bavail * st.f_frsize
        if raw + img > free:
            parts = f"raw data {_human(raw)}" + (f" + qcow2 image {_human(img)}" if img else "")
            raise ServerError(
                f"not enough space (disk full before a byte is written): "
                f"refused disk {h.name}: it needs about {_human(raw + img)} ({parts}, from the agent's "
                f"estimate of its non-zero bytes) but only {_human(free)} are free in {self.cap.store.root}; "
                f"free space there or give the receiver a bigger --root", code="disk_full")

    def end(self, end: P.DiskEnd, wire_bytes: int) -> None:
        d = self.disk
        if d is None:
            raise P.ProtocolError("END record outside a disk")
        d.counts["wire_bytes"] += wire_bytes
        if d.tree.pos != d.header.size:
            raise P.ProtocolError(f"END of disk {d.name} at byte {d.tree.pos} of {d.header.size}: records missing")
        got = d.tree.digest()
        if got != end.digest:
            raise ServerError(
                f"disk {d.name}: whole-disk digest mismatch (agent {end.digest.hex()}, received "
                f"{got.hex()}); nothing was marked complete", code="corrupt")
        t_recv = time.monotonic() - d.started
        os.fsync(d.fd)
        os.close(d.fd)
        d.fd = -1
        raw_path = self.cap.file_path(d.raw_name)
        t = time.monotonic()
        back = P.digest_file(raw_path, d.header.block_size)
        if back != got.hex():
            raise ServerError(
                f"disk {d.name}: the raw image read back from {raw_path} does not match what was "
                f"received (digest {back}); check the conversion server's disk", code="io")
        t_readback = time.monotonic() - t
        fmt = self.hello.format
        timings = {"receive_seconds": round(t_recv, 3), "readback_seconds": round(t_readback, 3)}
        if fmt == P.ImageFormat.QCOW2:
            img_name = d.name + ".qcow2"
            tmp_name = "." + img_name + ".tmp"
            self.files.append(tmp_name)
            tmp = os.path.join(self.cap.path, tmp_name)
            t = time.monotonic()
            image.convert_to_qcow2(raw_path, tmp)
            timings["convert_seconds"] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            image.compare(raw_path, tmp)
            timings["compare_seconds"] = round(time.monotonic() - t, 3)
            os.rename(tmp_name, img_name, src_dir_fd=self.cap.fd, dst_dir_fd=self.cap.fd)
            self.files.append(img_name)
            if not self.rx.keep_raw:
                self.cap.unlink(d.raw_name)
        else:
            img_name = d.raw_name
        st = os.stat(img_name, dir_fd=self.cap.fd)
        h = d.header
        entry = {
            "name": d.name,
            "source": h.source,
            "size": h.size,
            "logical_sector_size": h.logical_sector_size,
            "physical_sector_size": h.physical_sector_size,
            "block_size": h.block_size,
            "mode": h.mode,
            "codec": h.codec,
            "digest_algo": P.DIGEST_ALGO,
            "digest": got.hex(),
            "image": img_name,
            "format": fmt,
            "image_bytes_allocated": st.st_blocks * 512,
            "received": d.counts,
            "agent": end.stats(),
            "timings": timings,
            "verified": {"record_digests": True, "disk_digest": True, "readback_digest": True,
                         "qemu_img_compare": fmt == P.ImageFormat.QCOW2},
        }
        self.disks.append(entry)
        self.ends.append(end)
        self.disk = None
        log.info("disk %s verified: %s", d.name, img_name)
        self.rx.say(P.Reply(P.Event.DISK_OK, name=d.name, digest=got.hex(), image=img_name, counts=d.counts,
                            timings=timings))

    def finish(self) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"FINISH before END of disk {self.disk.name}")
        if not self.disks:
            raise P.ProtocolError("FINISH without any disk")
        totals = {k: sum(d["received"][k] for d in self.disks) for k in self.disks[0]["received"]}
        totals["size"] = sum(d["size"] for d in self.disks)
        totals["stream_bytes"] = self.rx.reader.consumed
        totals["bytes_read"] = sum(e.bytes_read or 0 for e in self.ends)
        hello = self.hello
        manifest = {
            "manifest_version": 1,
            "capture_id": self.cap.capture_id,
            "status": "complete",
            "started": self.rx.started,
            "finished": _now(),
            "receive_seconds": round(time.monotonic() - self.rx.t0, 3),
            "source": hello.source,
            "agent_version": hello.agent_version,
            "receiver": {"version": __version__, "host": socket.gethostname(),
                         "python": platform.python_version(), "qemu_img": image.qemu_img_version()},
            "protocol": P.VERSION,
            "disks": self.disks,
            "totals": totals,
        }
        if hello.estimate is not None:
            # Predicted vs actual: what the agent estimated before the capture, next to how long
            # this end took from the first byte to the manifest (the agent adds its connect time).
            predicted = hello.estimate.get("total_seconds")
            manifest["estimate"] = hello.estimate
            manifest["estimate_vs_actual"] = {
                "predicted_seconds": predicted,
                "actual_seconds": manifest["receive_seconds"],
                "ratio": (round(manifest["receive_seconds"] / predicted, 3)
                          if isinstance(predicted, (int, float)) and predicted > 0 else None),
            }
        if hello.readiness is not None:
            # typed on the way in: what conversion and publishing read back is a valid report
            try:
                manifest["readiness"] = ReadinessReport.from_dict(hello.readiness).to_dict()
            except ColdcloneError as e:
                log.warning("the agent's readiness report is malformed (%s); left out", e)
        self.cap.write_atomic(MANIFEST, P.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        path = self.cap.complete()
        log.info("capture %s complete: %s", self.cap.capture_id, path)
        # with --convert the conversion starts once this session ends: say now where its images
        # will be, the agent's summary is the operator's last look at this capture
        converted = (tuple(os.path.join(path, converted_image_name(d["name"])) for d in self.disks)
                     if self.rx.convert else ())
        self.rx.say(P.Reply(P.Event.COMPLETE, path=path, manifest=manifest, converted_images=converted))

    def abort(self, reason: str) -> int:
        raise ServerError(f"the agent aborted the capture: {reason}", code="aborted")

    def fail(self, code: str, message: str) -> str | None:
        self.close_disk()
        cap = self.cap
        # Half-written images and temp files are useless and may hold the space that ran out.
        for name in self.files:
            try:
                cap.unlink(name)
            except (OSError, ServerError) as e:
                log.error("could not remove %s: %s", name, e)
        record = {"status": "failed", "code": code, "error": message, "capture_id": cap.capture_id,
                  "started": self.rx.started, "failed": _now(),
                  "disks_verified": [d["name"] for d in self.disks]}
        try:
            cap.write_atomic(FAILURE, P.dumps(record, indent=2).encode() + b"\n")
        except OSError as e:
            log.error("could not write failure.json: %s", e)
        cap.unlock()
        return cap.path

    def close(self) -> None:
        super().close()
        self.cap.close()
        self.store.close()


class ProbeSink(_Sink):
    """A calibration probe: no capture directory, nothing named in the root, ever."""

    def __init__(self, rx: "Receiver"):
        super().__init__(rx)
        self.t0: float | None = None
        self.synced = 0
        self.sync_seconds = 0.0
        self.store = store = Store(resolve_root(rx.forced_root, rx.requested_root))
        self.fd = -1
        try:
            # O_TMPFILE: a file without a name, on the filesystem the images would go to.
            self.fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=store.fd)
        except OSError:
            # Filesystems without O_TMPFILE (NFS): a dot-name unlinked at once (NFS keeps it
            # as .nfsXXXX while open and removes it at close).
            name = f".coldclone-probe-{os.getpid()}-{time.monotonic_ns()}"
            self.fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=store.fd)
            os.unlink(name, dir_fd=store.fd)
        log.info("calibration probe into %s (nothing is kept)", store.root)
        rx.say(P.Reply(P.Event.READY, capture_id=None, path=store.root, probe=True,
                       receiver_version=__version__, protocol=P.VERSION))

    def open_disk(self, h: P.DiskHeader) -> int:
        self.t0 = time.monotonic()
        return os.dup(self.fd)

    def written(self, d: DiskState) -> None:
        if d.counts["data_bytes"] - self.synced >= PROBE_SYNC_BYTES:
            # The page cache would take a short probe at memory speed: sync as we go, so the
            # probe measures what the disk sustains over a whole capture.
            t = time.monotonic()
            os.fdatasync(d.fd)
            self.sync_seconds += time.monotonic() - t
            self.synced = d.counts["data_bytes"]

    def finish(self) -> None:
        """How fast this end took the probe's records: verified, written and on the disk (fsync)."""
        d = self.disk
        if d is None or self.t0 is None:
            raise P.ProtocolError("probe FINISH without a DISK")
        t = time.monotonic()
        os.fsync(d.fd)
        self.sync_seconds += time.monotonic() - t
        seconds = time.monotonic() - self.t0
        # Read back and hash what was written, as END does for a capture: its rate feeds the
        # estimate of the time the server verifies and converts after the last byte.
        t, off = time.monotonic(), 0
        while off < d.tree.pos:
            buf = os.pread(d.fd, min(P.DEFAULT_CHUNK_SIZE, d.tree.pos - off), off)
            if not buf:
                break
            P.block_digests(buf, d.header.block_size)
            off += len(buf)
        readback = time.monotonic() - t
        self.close()
        self.rx.say(P.Reply(P.Event.PROBE, bytes=self.rx.reader.consumed, covered=d.tree.pos, counts=d.counts,
                            seconds=round(seconds, 4), sync_seconds=round(self.sync_seconds, 4),
                            readback_bytes=off, readback_seconds=round(readback, 4)))

    def abort(self, reason: str) -> int:
        return 0   # a probe leaves nothing behind; ABORT just ends it

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)   # the unnamed file disappears
            self.fd = -1
        self.store.close()


class Receiver:
    """The record loop: preamble, HELLO (which picks the sink), then records to the sink."""

    def __init__(self, root: str, out: BinaryIO, requested_root: str | None = None, keep_raw: bool = False,
                 convert: bool = False):
        self.forced_root = root
        self.requested_root = requested_root
        self.out = out
        self.keep_raw = keep_raw
        self.convert = convert        # a conversion is queued after a complete capture (--convert)
        self.sink: _Sink | None = None
        self.started = _now()
        self.t0 = time.monotonic()
        self.reader: P.Reader | None = None

    def say(self, reply: P.Reply) -> None:
        try:
            self.out.write(reply.encode())
            self.out.flush()
        except (OSError, ValueError):
            pass  # the agent is gone; the failure record on disk still tells the story

    def run(self, stream: BinaryIO) -> int:
        """Receive one stream; 0 when it completed (or a probe ended), 1 after a failure.

        The one handler: whatever goes wrong below ends in _fail (failure.json, error reply).
        """
        try:
            return self._loop(stream)
        except P.ProtocolError as e:
            where = self.sink.where() if self.sink else ""
            self._fail("protocol", f"{e}{where}")
        except ServerError as e:
            self._fail(e.code, str(e))
        except SessionEnded as e:
            self._fail("session_ended", str(e))
        except OSError as e:
            self._fail(*self._os_error(e))
        except MemoryError:
            self._fail("resources", "the conversion server ran out of memory for this stream"
                                    f"{self.sink.where() if self.sink else ''}")
        except Exception as e:  # a bug: still a clean answer and a failure record, never a traceback
            log.exception("internal error")
            self._fail("internal", f"internal error in coldclone-receive ({type(e).__name__}: {e}); "
                                   f"the receiver's log (stderr) has the details")
        finally:
            if self.sink is not None:
                self.sink.close()
        return 1

    def _loop(self, stream: BinaryIO) -> int:
        self.reader = reader = P.Reader(stream)
        reader.read_preamble()
        rec = reader.read()
        if rec.type != P.T_HELLO:
            raise P.ProtocolError(f"expected HELLO, got {rec.name}")
        hello = P.Hello.decode(rec.meta)
        self.sink = sink = ProbeSink(self) if hello.probe else CaptureSink(self, hello)
        while True:
            rec = reader.read()
            if rec.type == P.T_DISK:
                sink.disk_header(P.DiskHeader.decode(rec.meta))
            elif rec.type in (P.T_DATA, P.T_ZERO):
                sink.extent(rec)
            elif rec.type == P.T_END:
                sink.end(P.DiskEnd.decode(rec.digest, rec.meta), rec.wire_bytes)
            elif rec.type == P.T_FINISH:
                sink.finish()
                return 0
            elif rec.type == P.T_ABORT:
                return sink.abort(P.Abort.decode(rec.meta).reason)
            else:
                raise P.ProtocolError(f"unexpected {rec.name} record")

    def _os_error(self, e: OSError) -> tuple[str, str]:
        cap = self.sink.cap if isinstance(self.sink, CaptureSink) else None
        where = cap.path if cap else self.forced_root
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            d = self.sink.disk if self.sink else None
            disk = f" while writing disk {d.name} at byte {d.tree.pos}" if d else ""
            return ("disk_full", f"conversion server disk full{disk} in {where}: {e.strerror}; "
                                 f"free space there or give the receiver a bigger --root")
        return ("io", f"I/O error on the conversion server in {where}: {e}")

    def _fail(self, code: str, message: str) -> None:
        log.error("%s: %s", code, message)
        path = None
        if self.sink is not None:
            try:
                path = self.sink.fail(code, message)
            except BaseException as e:  # cleaning up must not hide the first error
                log.error("cleanup after %s failed: %r", code, e)
        self.say(P.Reply(P.Event.ERROR, code=code, message=message, path=path))
