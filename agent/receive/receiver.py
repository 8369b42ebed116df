"""`coldclone-receive`: turn one capture stream into verified images and a manifest.

For each disk: every DATA record is decompressed and checked against its
digest before it is written into a sparse raw file; ZERO records leave holes.
At END the whole-disk digest is checked twice (as received, and read back
from the file), the raw file becomes qcow2 and `qemu-img compare` proves the
two equal. Only after every disk passed and manifest.json is on disk is the
capture directory renamed from `<id>.partial` to `<id>`: that rename is the
single "complete" mark. Any failure leaves `<id>.partial/failure.json` saying
exactly what failed, removes the half-written images, and answers the agent
with an error reply.
"""

from __future__ import annotations

import errno
import json
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
from . import image
from .store import CaptureDir, Store, resolve_root, validate_name

log = logging.getLogger("coldclone.receive")

FORMATS = ("qcow2", "raw")
PROBE_SYNC_BYTES = 16 << 20


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class DiskState:
    meta: dict
    name: str
    size: int
    block_size: int
    fd: int
    raw_name: str
    tree: P.BlockTree
    started: float = field(default_factory=time.monotonic)
    counts: dict = field(default_factory=lambda: dict(
        data_bytes=0, zero_bytes=0, payload_bytes=0, wire_bytes=0, data_records=0, zero_records=0))


class Receiver:
    def __init__(self, root: str, out: BinaryIO, requested_root: str | None = None, keep_raw: bool = False):
        self.forced_root = root
        self.requested_root = requested_root
        self.out = out
        self.keep_raw = keep_raw
        self.cap: CaptureDir | None = None
        self.disk: DiskState | None = None
        self.disks: list[dict] = []
        self.files: list[str] = []
        self.dctx = zstandard.ZstdDecompressor()
        self.hello: dict = {}
        self.started = _now()
        self.t0 = time.monotonic()
        self.reader: P.Reader | None = None
        # Calibration probe (HELLO "probe": true; docs/protocol.md): the records are checked and
        # written as in a capture, into an unnamed file that vanishes when the probe ends.
        self.probe = False
        self.probe_fd: int | None = None
        self.probe_t0: float | None = None
        self.probe_synced = 0
        self.probe_sync_seconds = 0.0

    # ------------------------------------------------------------ replies
    def say(self, event: str, **fields) -> None:
        try:
            self.out.write(P.reply(event, **fields))
            self.out.flush()
        except OSError:
            pass  # the agent is gone; the failure record on disk still tells the story

    # --------------------------------------------------------------- main
    def run(self, stream: BinaryIO) -> int:
        self.reader = reader = P.Reader(stream)
        try:
            reader.read_preamble()
            rec = reader.read()
            if rec.type != P.T_HELLO:
                raise P.ProtocolError(f"expected HELLO, got {rec.name}")
            self._hello(rec.meta)
            while True:
                rec = reader.read()
                if rec.type == P.T_DISK:
                    self._disk(rec.meta)
                elif rec.type in (P.T_DATA, P.T_ZERO):
                    self._extent(rec)
                elif rec.type == P.T_END:
                    self._end(rec)
                elif rec.type == P.T_FINISH:
                    if self.probe:
                        self._probe_finish()
                        return 0
                    self._finish()
                    return 0
                elif rec.type == P.T_ABORT and self.probe:
                    return 0
                elif rec.type == P.T_ABORT:
                    reason = str(rec.meta.get("reason", "no reason given"))
                    self._fail("aborted", f"the agent aborted the capture: {reason}")
                    return 1
                else:
                    raise P.ProtocolError(f"unexpected {rec.name} record")
        except P.ProtocolError as e:
            where = f" (disk {self.disk.name} at byte {self.disk.tree.pos})" if self.disk else ""
            self._fail("protocol", f"{e}{where}")
        except ServerError as e:
            self._fail(e.code, str(e))
        except OSError as e:
            self._fail(*self._os_error(e))
        return 1

    def _os_error(self, e: OSError) -> tuple[str, str]:
        where = self.cap.path if self.cap else self.forced_root
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            disk = f" while writing disk {self.disk.name} at byte {self.disk.tree.pos}" if self.disk else ""
            return ("disk_full", f"conversion server disk full{disk} in {where}: {e.strerror}; "
                                 f"free space there or give the receiver a bigger --root")
        return ("io", f"I/O error on the conversion server in {where}: {e}")

    # ------------------------------------------------------------- records
    def _hello(self, meta: dict) -> None:
        self.hello = meta
        if meta.get("probe") is True:
            self._probe_hello()
            return
        fmt = meta.get("format", "qcow2")
        if fmt not in FORMATS:
            raise ServerError(f"refused image format {fmt!r}: choose qcow2 or raw", code="usage")
        root = resolve_root(self.forced_root, self.requested_root)
        store = Store(root)
        self.cap = store.make_capture_dir(meta.get("capture_id"))
        log.info("capture %s into %s", self.cap.capture_id, self.cap.path)
        self.say("ready", capture_id=self.cap.capture_id, path=self.cap.path,
                 receiver_version=__version__, protocol=P.VERSION)

    def _disk(self, meta: dict) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"DISK {meta.get('name')!r} before END of disk {self.disk.name}")
        name = validate_name(meta.get("name"), "disk name")
        size, bs = meta.get("size"), meta.get("block_size")
        if not isinstance(size, int) or size <= 0:
            raise P.ProtocolError(f"disk {name}: bad size {size!r}")
        if not isinstance(bs, int) or bs < 512 or bs & (bs - 1) or bs > P.MAX_DATA:
            raise P.ProtocolError(f"disk {name}: bad block size {bs!r}")
        if any(d["name"] == name for d in self.disks):
            raise ServerError(f"refused: disk {name} sent twice in one capture", code="bad_name")
        raw_name = name + ".raw"
        if self.probe:
            fd = os.dup(self.probe_fd)
            self.probe_t0 = time.monotonic()
        else:
            fd = self.cap.create(raw_name)
            self.files.append(raw_name)
            os.ftruncate(fd, size)
        self.disk = DiskState(meta, name, size, bs, fd, raw_name, P.BlockTree(size, bs))
        log.info("disk %s: %d bytes", name, size)

    def _extent(self, rec: P.Record) -> None:
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
        if rec.codec == P.CODEC_ZSTD:
            try:
                data = self.dctx.decompress(rec.payload, max_output_size=rec.length)
            except zstandard.ZstdError as e:
                raise ServerError(
                    f"DATA record of disk {d.name} at byte {rec.offset} ({rec.length} bytes) cannot be "
                    f"decompressed ({e}): corrupted in transit; nothing was marked complete, capture again",
                    code="corrupt") from None
        else:
            data = rec.payload
        if len(data) != rec.length:
            raise ServerError(
                f"DATA record of disk {d.name} at byte {rec.offset} holds {len(data)} bytes, "
                f"its header says {rec.length}: corrupted in transit", code="corrupt")
        digests = P.block_digests(data, d.block_size)
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
        if self.probe and c["data_bytes"] - self.probe_synced >= PROBE_SYNC_BYTES:
            # The page cache would take a short probe at memory speed: sync as we go, so the
            # probe measures what the disk sustains over a whole capture.
            t = time.monotonic()
            os.fdatasync(d.fd)
            self.probe_sync_seconds += time.monotonic() - t
            self.probe_synced = c["data_bytes"]

    def _end(self, rec: P.Record) -> None:
        d = self.disk
        if d is None:
            raise P.ProtocolError("END record outside a disk")
        d.counts["wire_bytes"] += rec.wire_bytes
        if d.tree.pos != d.size:
            raise P.ProtocolError(f"END of disk {d.name} at byte {d.tree.pos} of {d.size}: records missing")
        got = d.tree.digest()
        if got != rec.digest:
            raise ServerError(
                f"disk {d.name}: whole-disk digest mismatch (agent {rec.digest.hex()}, received "
                f"{got.hex()}); nothing was marked complete", code="corrupt")
        t_recv = time.monotonic() - d.started
        os.fsync(d.fd)
        os.close(d.fd)
        raw_path = self.cap.file_path(d.raw_name)
        t = time.monotonic()
        back = P.digest_file(raw_path, d.block_size)
        if back != got.hex():
            raise ServerError(
                f"disk {d.name}: the raw image read back from {raw_path} does not match what was "
                f"received (digest {back}); check the conversion server's disk", code="io")
        t_readback = time.monotonic() - t
        fmt = self.hello.get("format", "qcow2")
        timings = {"receive_seconds": round(t_recv, 3), "readback_seconds": round(t_readback, 3)}
        if fmt == "qcow2":
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
            if not self.keep_raw:
                self.cap.unlink(d.raw_name)
        else:
            img_name = d.raw_name
        st = os.stat(img_name, dir_fd=self.cap.fd)
        entry = {
            "name": d.name,
            "source": d.meta.get("source", {}),
            "size": d.size,
            "logical_sector_size": d.meta.get("logical_sector_size"),
            "physical_sector_size": d.meta.get("physical_sector_size"),
            "block_size": d.block_size,
            "mode": d.meta.get("mode"),
            "codec": d.meta.get("codec"),
            "digest_algo": P.DIGEST_ALGO,
            "digest": got.hex(),
            "image": img_name,
            "format": fmt,
            "image_bytes_allocated": st.st_blocks * 512,
            "received": d.counts,
            "agent": rec.meta,
            "timings": timings,
            "verified": {"record_digests": True, "disk_digest": True, "readback_digest": True,
                         "qemu_img_compare": fmt == "qcow2"},
        }
        self.disks.append(entry)
        self.disk = None
        log.info("disk %s verified: %s", d.name, img_name)
        self.say("disk_ok", name=d.name, digest=got.hex(), image=img_name, counts=d.counts,
                 timings=timings)

    def _finish(self) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"FINISH before END of disk {self.disk.name}")
        if not self.disks:
            raise P.ProtocolError("FINISH without any disk")
        totals = {k: sum(d["received"][k] for d in self.disks) for k in self.disks[0]["received"]}
        totals["size"] = sum(d["size"] for d in self.disks)
        totals["stream_bytes"] = self.reader.consumed
        totals["bytes_read"] = sum(d["agent"].get("bytes_read", 0) for d in self.disks)
        manifest = {
            "manifest_version": 1,
            "capture_id": self.cap.capture_id,
            "status": "complete",
            "started": self.started,
            "finished": _now(),
            "receive_seconds": round(time.monotonic() - self.t0, 3),
            "source": self.hello.get("source", {}),
            "agent_version": self.hello.get("agent_version"),
            "receiver": {"version": __version__, "host": socket.gethostname(),
                         "python": platform.python_version(), "qemu_img": image.qemu_img_version()},
            "protocol": P.VERSION,
            "disks": self.disks,
            "totals": totals,
        }
        if isinstance(self.hello.get("estimate"), dict):
            # Predicted vs actual: what the agent estimated before the capture, next to how long
            # this end took from the first byte to the manifest (the agent adds its connect time).
            est = self.hello["estimate"]
            manifest["estimate"] = est
            predicted = est.get("total_seconds")
            manifest["estimate_vs_actual"] = {
                "predicted_seconds": predicted,
                "actual_seconds": manifest["receive_seconds"],
                "ratio": (round(manifest["receive_seconds"] / predicted, 3)
                          if isinstance(predicted, (int, float)) and predicted > 0 else None),
            }
        if self.hello.get("readiness") is not None:
            # typed on the way in: what conversion and publishing read back is a valid report
            from ..inspect.report import ReadinessReport

            try:
                manifest["readiness"] = ReadinessReport.from_dict(self.hello["readiness"]).to_dict()
            except ColdcloneError as e:
                log.warning("the agent's readiness report is malformed (%s); left out", e)
        self.cap.write_atomic("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        path = self.cap.complete()
        log.info("capture %s complete: %s", self.cap.capture_id, path)
        self.say("complete", path=path, manifest=manifest)

    # -------------------------------------------------------- probe mode
    def _probe_hello(self) -> None:
        """A calibration probe: no capture directory, nothing named in the root, ever."""
        self.probe = True
        store = Store(resolve_root(self.forced_root, self.requested_root))
        try:
            # O_TMPFILE: a file without a name, on the filesystem the images would go to.
            self.probe_fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=store.fd)
        except OSError:
            # Filesystems without O_TMPFILE (NFS): a dot-name unlinked at once (NFS keeps it
            # as .nfsXXXX while open and removes it at close).
            name = f".coldclone-probe-{os.getpid()}-{time.monotonic_ns()}"
            self.probe_fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                    0o600, dir_fd=store.fd)
            os.unlink(name, dir_fd=store.fd)
        log.info("calibration probe into %s (nothing is kept)", store.root)
        self.say("ready", capture_id=None, path=store.root, probe=True,
                 receiver_version=__version__, protocol=P.VERSION)

    def _probe_finish(self) -> None:
        """How fast this end took the probe's records: verified, written and on the disk (fsync)."""
        d = self.disk
        if d is None or self.probe_t0 is None:
            raise P.ProtocolError("probe FINISH without a DISK")
        t = time.monotonic()
        os.fsync(d.fd)
        self.probe_sync_seconds += time.monotonic() - t
        seconds = time.monotonic() - self.probe_t0
        # Read back and hash what was written, as END does for a capture: its rate feeds the
        # estimate of the time the server verifies and converts after the last byte.
        t, off = time.monotonic(), 0
        while off < d.tree.pos:
            buf = os.pread(d.fd, min(P.DEFAULT_CHUNK_SIZE, d.tree.pos - off), off)
            if not buf:
                break
            P.block_digests(buf, d.block_size)
            off += len(buf)
        readback = time.monotonic() - t
        os.close(d.fd)
        os.close(self.probe_fd)
        self.disk = None
        self.say("probe", bytes=self.reader.consumed, covered=d.tree.pos, counts=d.counts,
                 seconds=round(seconds, 4), sync_seconds=round(self.probe_sync_seconds, 4),
                 readback_bytes=off, readback_seconds=round(readback, 4))

    # ------------------------------------------------------------ failure
    def _fail(self, code: str, message: str) -> None:
        log.error("%s: %s", code, message)
        cap = self.cap
        if self.disk is not None:
            try:
                os.close(self.disk.fd)
            except OSError:
                pass
            self.disk = None
        if cap is not None:
            # Half-written images are useless and may hold the space that ran out.
            for name in self.files:
                try:
                    cap.unlink(name)
                except (OSError, ServerError):
                    pass
            record = {"status": "failed", "code": code, "error": message, "capture_id": cap.capture_id,
                      "started": self.started, "failed": _now(), "disks_verified": [d["name"] for d in self.disks]}
            try:
                cap.write_atomic("failure.json", json.dumps(record, indent=2).encode() + b"\n")
            except OSError as e:
                log.error("could not write failure.json: %s", e)
        self.say("error", code=code, message=message, path=cap.path if cap else None)
