"""`coldclone-receive`: turn one capture stream into verified images and a manifest.

One record loop (Receiver) reads the stream and hands each record, decoded
into its typed model, to a sink: a CaptureSink for a capture, a ProbeSink for
a calibration probe. Both check and write DATA/ZERO records the same way
(_Sink.extent): every DATA record is decompressed (bounded) and checked
against its digest before it is written; ZERO records leave holes.

A capture: each disk is written straight into its final image (a qcow2 through
qemu's own block layer, disk_image.Qcow2Image; a raw file for format raw). At END
the whole-disk digest is checked twice (as received, and read back from the image
as stored: for a qcow2, as qemu reads it), the image is flushed, and a qcow2 is
closed and `qemu-img check`ed: nothing after the last byte grows with the disk. UNREADABLE records (sectors the agent could not read) are checked to
arrive as zeros and listed in the manifest. Only after every disk passed and manifest.json is on
disk is the capture directory renamed from `<id>.partial` to `<id>`: that
rename is the single "complete" mark. Any failure, whatever raised it, goes
through one handler: it leaves `<id>.partial/failure.json` saying exactly what
failed, removes the half-written images and temp files, and answers the agent
with an error reply. No traceback ever reaches the agent.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import platform
import resource
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from ... import __version__
from ... import protocol as P
from ...errors import ColdcloneError, ServerError
from ... import records
from ...manifest import (Cutover, DiskResume, EstimateVsActual, Manifest, ManifestDisk, Phase, ReceiverFacts,
                        Sync, Unreadable, UnreadableRange, Verified)
from ...records import UNSET, Unset
from ...units import human_bytes
from . import identity
from . import journal as J
from . import warm as W
from .disk_image import Image, Qcow2Image, RawImage, discard_from, image_name
from .image import convert_to_raw, qemu_img_version
from .load import server_load
from .prefetch import Prefetch
from .readback import Readback
from .store import (FAILURE, MANIFEST, Store, converted_image_name, resolve_root, validate_capture_id,
                    validate_disk_name, validate_name)
from .unfinished import find_unfinished

log = logging.getLogger("coldclone.receive")

PROBE_SYNC_BYTES = 16 << 20


class SessionEnded(Exception):
    """The agent's session is over (idle timeout, hangup, parent gone): stop, record why."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _cpu_seconds() -> float:
    """CPU seconds of this receiver and the children it waited for (qemu-nbd, qemu-img), all threads."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class FailureRecord:
    """`<id>.partial/failure.json`: what failed, and whether the capture can be resumed."""

    code: str                     # the error reply's code (corrupt, no_space, cut ...)
    error: str
    capture_id: str
    started: str
    failed: str
    disks_verified: list[str]
    resumable: bool               # the journals vouch for what is held: `--resume ID` continues
    held: dict[str, int]          # bytes held per disk (resumable)
    status: str = "failed"
    # the capture's facts a journal header keeps too (Receiver.capture_facts): what
    # `coldclone-server status` shows of a capture whose journals are gone
    wave: str | None = None
    hostname: str | None = None
    disks: list[str] = field(default_factory=list)
    size: int | None = None


@dataclass
class DiskState:
    header: P.DiskHeader
    image: "RawImage | Qcow2Image | None"   # what the records are written into (disk_image)
    image_name: str
    tree: P.BlockTree
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=_cpu_seconds)
    counts: dict = field(default_factory=lambda: dict(
        data_bytes=0, zero_bytes=0, payload_bytes=0, wire_bytes=0, data_records=0, zero_records=0,
        unreadable_bytes=0))
    # UNREADABLE ranges as (offset, length), in disk order; merged when they touch.
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    journal: J.DiskJournal | None = None
    # A resumed disk: where this attempt started, the DATA bytes earlier attempts delivered below
    # it, and (restarted from 0) why the held copy was dropped.
    resumed_from: int = 0
    data_bytes_before: int = 0
    restart_reason: str | None = None
    complete_entry: dict | None = None   # verified in an earlier attempt: only END is expected
    readback: Readback | None = None     # the read-back digest, following the writes
    # A warm capture's disk (receive/warm.py): its stored block digests (the tree writes them),
    # and when it comes as a delta against them, its write window and counts.
    blocks: W.BlockDigests | None = None
    delta: W.DeltaDisk | None = None

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def sector_size(self) -> int:
        return self.header.logical_sector_size or 512

    def unreadable_entry(self) -> Unreadable:
        """The manifest's account of the disk's unreadable sectors (no ranges when none)."""
        ss = self.sector_size
        # a short last sector (a disk whose size is not whole sectors) counts as one
        return Unreadable(ss, [UnreadableRange(o // ss, -(-n // ss), o, n) for o, n in self.unreadable])


class _Sink:
    """What both sinks share: disk bookkeeping and the checking and writing of DATA/ZERO records."""

    def __init__(self, rx: "Receiver"):
        self.rx = rx
        self.disk: DiskState | None = None
        self.dctx = zstandard.ZstdDecompressor()

    def where(self) -> str:
        return f" (disk {self.disk.name} at byte {self.disk.tree.pos})" if self.disk else ""

    def open_disk(self, h: P.DiskHeader) -> DiskState:
        raise NotImplementedError

    def disk_header(self, h: P.DiskHeader) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"DISK {h.name!r} before END of disk {self.disk.name}")
        validate_disk_name(h.name)
        self.disk = self.open_disk(h)
        log.info("disk %s: %d bytes", h.name, h.size)

    def _payload(self, rec: P.Record, d: DiskState) -> bytes:
        """The record's bytes, decompressed with a hard cap: never more than its declared length + 1."""
        if rec.codec == P.CODEC_NONE:
            return rec.payload

        def corrupt(why: str) -> ServerError:
            return ServerError(
                f"DATA record of disk {d.name} at byte {rec.offset} ({rec.length} bytes) cannot be "
                f"decompressed ({why}): corrupted in transit; nothing was marked complete, capture again",
                code="corrupt")

        if rec.codec == P.CODEC_ZLIB:
            # the sync file's codec (the standard library's): bounded the same way
            z = zlib.decompressobj()
            try:
                out = z.decompress(rec.payload, rec.length + 1)
            except zlib.error as e:
                raise corrupt(str(e)) from None
            if len(out) > rec.length:
                raise corrupt(f"it holds more than the {rec.length} bytes the record declares")
            if not z.eof or z.unused_data:
                raise corrupt("its zlib stream is not one whole stream")
            return out

        try:
            declared = zstandard.get_frame_parameters(rec.payload).content_size
        except zstandard.ZstdError as e:
            raise corrupt(str(e)) from None
        # A frame header may declare any size (a 64 KiB frame saying 2 GiB): check it against the
        # record before decompressing anything.
        if declared not in (0, zstandard.CONTENTSIZE_UNKNOWN) and declared != rec.length:
            raise corrupt(f"its zstd frame declares {declared} bytes") from None
        try:
            # One C call (it releases the GIL, so the prefetch thread keeps reading meanwhile);
            # max_output_size bounds a frame that does not declare its size, and a declared size
            # was checked against the record above, so nothing larger than the record is allocated.
            out = self.dctx.decompress(rec.payload, max_output_size=rec.length + 1)
        except zstandard.ZstdError as e:
            raise corrupt(str(e)) from None
        if len(out) > rec.length:
            raise corrupt(f"it holds more than the {rec.length} bytes the record declares")
        return out

    def unreadable(self, rec: P.Record) -> None:
        """An UNREADABLE range: announced before the records carrying its bytes (as zeros)."""
        d = self.disk
        if d is None:
            raise P.ProtocolError("UNREADABLE record outside a disk")
        ss = d.sector_size
        prev_end = d.unreadable[-1][0] + d.unreadable[-1][1] if d.unreadable else 0
        # whole sectors, but for the tail of a disk whose size is not whole sectors
        if rec.length <= 0 or rec.offset % ss or (rec.length % ss and rec.offset + rec.length != d.header.size):
            raise P.ProtocolError(f"UNREADABLE {rec.offset}+{rec.length} of disk {d.name} is not "
                                  f"aligned to its {ss}-byte sectors")
        if rec.offset < max(d.tree.pos, prev_end) or rec.offset + rec.length > d.header.size:
            raise P.ProtocolError(f"UNREADABLE {rec.offset}+{rec.length} of disk {d.name}: out of order, "
                                  f"overlapping or past the end (received up to byte {d.tree.pos})")
        d.counts["wire_bytes"] += rec.wire_bytes
        d.counts["unreadable_bytes"] += rec.length
        if rec.offset == prev_end and d.unreadable:
            d.unreadable[-1] = (d.unreadable[-1][0], d.unreadable[-1][1] + rec.length)
        else:
            d.unreadable.append((rec.offset, rec.length))

    def _check_zero_filled(self, d: DiskState, offset: int, data: bytes) -> None:
        """The bytes of announced UNREADABLE ranges in a DATA record must be zeros."""
        end = offset + len(data)
        for o, n in reversed(d.unreadable):
            if o + n <= offset:
                break   # ranges are in order: nothing earlier reaches this record
            a, b = max(o, offset), min(o + n, end)
            if a < b and data[a - offset:b - offset].count(0) != b - a:
                raise ServerError(
                    f"disk {d.name}: DATA at byte {a} holds non-zero bytes in a range the agent "
                    f"declared unreadable ({o}+{n}); corrupted stream, nothing was marked complete",
                    code="corrupt")

    def extent(self, rec: P.Record) -> None:
        d = self.disk
        if d is None:
            raise P.ProtocolError(f"{rec.name} record outside a disk")
        c = d.counts
        c["wire_bytes"] += rec.wire_bytes
        if rec.type == P.T_ZERO:
            d.tree.add_zero(rec.offset, rec.length)  # checks order and alignment
            if d.delta is not None:
                # over a held image a ZERO must write zeros (a new image is zeros already)
                d.delta.writing(rec.offset, rec.length, data=False)
                d.image.write_zeroes(rec.offset, rec.length)
            c["zero_bytes"] += rec.length
            c["zero_records"] += 1
            if d.delta is not None:
                self.written(d)
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
        if d.unreadable:
            self._check_zero_filled(d, rec.offset, data)
        if d.delta is not None:
            d.delta.writing(rec.offset, rec.length, data=True)
        d.image.pwrite(data, rec.offset)
        c["data_bytes"] += rec.length
        c["payload_bytes"] += len(rec.payload)
        c["data_records"] += 1
        self.written(d)

    def written(self, d: DiskState) -> None:
        """After each DATA record (the probe syncs as it goes)."""

    def same(self, rec: P.Record) -> None:
        raise P.ProtocolError("SAME record outside a disk sent as a delta")

    def end(self, end: P.DiskEnd, wire_bytes: int) -> None:
        raise P.ProtocolError("END record in a calibration probe")

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self, reason: str) -> int:
        raise NotImplementedError

    def close_disk(self) -> None:
        if self.disk is not None:
            if self.disk.blocks is not None:
                self.disk.blocks.close()
            if self.disk.delta is not None:
                self.disk.delta.intent.close()
            if self.disk.readback is not None:
                self.disk.readback.close()
                self.disk.readback = None
            if self.disk.image is not None:
                try:
                    self.disk.image.close()
                except OSError:
                    pass
                self.disk.image = None
            self.disk = None

    def fail(self, code: str, message: str, cut: bool = False) -> str | None:
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
        self.held_names: dict[str, str] = {}   # READY's held disks: {name in the capture: the agent's name}
        self.disks: list[ManifestDisk] = []  # manifest entries, one per verified disk
        self.ends: list[P.DiskEnd] = []     # and the agent's END for each
        self.files: list[str] = []
        # Resume journals: those found in a resumed capture, then one per disk as it starts.
        self.journals: dict[str, J.DiskJournal] = {}
        self.rebuilt: dict[str, tuple[Image, P.BlockTree]] = {}  # held disks: image, tree at the held end
        # Two-phase migrations (receive/warm.py): the warm capture this session updates (its last
        # manifest), the disks it may send as deltas, and what this session sent of them.
        self.warm: Manifest | None = None
        self.delta_held: dict[str, W.DeltaHeld] = {}
        self.sync = dict(bytes_read=0, bytes_sent=0, segments_changed=0, bytes_changed=0)
        # held disk -> the agent's name for it now (READY's agent_name where it differs)
        self.agent_names: dict[str, str] = {}
        self.store = Store(resolve_root(rx.forced_root, rx.requested_root))
        try:
            if hello.resume and hello.delta and W.is_warm(self.store, hello.capture_id):
                # proven before anything changes (the rename is a change): another server's
                # agent is refused and the warm capture stays exactly as it was
                wm = W.warm_manifest(os.path.join(self.store.root, hello.capture_id, MANIFEST))
                self.prove([W.DeltaHeld.of(d).header() for d in wm.disks], hello)
                self.cap, resumed = W.reopen(self.store, hello.capture_id), True
            elif hello.resume:
                self.tidy_complete(hello.capture_id)
                self.cap, resumed = self.store.resume_capture_dir(hello.capture_id)
            else:
                self.cap, resumed = self.store.make_capture_dir(hello.capture_id), False
        except BaseException:
            self.store.close()
            raise
        maps: dict[str, bytes] = {}
        if resumed:
            try:
                self.journals = J.load_all(self.cap)
                self.warm = W.load_warm(self.cap)
                if self.warm is not None:
                    if not hello.delta:
                        raise ServerError(
                            f"refused: capture {hello.capture_id} is a warm capture being updated: continue it "
                            f"with coldclone sync or the cutover from the ISO (an agent that sends deltas)",
                            code="usage")
                    self.delta_held = {d.name: W.DeltaHeld.of(d) for d in self.warm.disks
                                       if d.name not in self.journals}
                # The same server, proven before anything held is re-read, cut, continued or
                # dropped: an agent key and a capture id alone are no proof (receive/identity.py).
                self.agent_names = self.prove([j.header for j in self.journals.values()]
                                              + [dh.header() for dh in self.delta_held.values()], hello)
                if hello.delta:
                    maps = self.delta_maps()
                # Before READY: once the agent streams, this end must keep reading (a long read
                # here would look like a dead link to the agent's stall watchdog). The agent waits
                # for READY of a resumed capture as long as this takes.
                for j in self.journals.values():
                    if j.complete is None and j.held:
                        self.rebuilt[j.header.name] = self.rebuild(j)
            except BaseException:
                # Left as it was (failure.json, journals): the error names what to do. A capture
                # that had failed (failure.json, no lock) stays so: the lock taken over for this
                # session goes, or `--gc` would take the capture for a dead receiver's and clean it.
                self.close_journals()
                if os.path.lexists(self.cap.file_path(FAILURE)):
                    self.cap.unlock()
                self.cap.close()
                self.store.close()
                raise
            self.cap.unlink(FAILURE)       # it is in progress again
            for name in self.delta_held:
                # A test launch's conversion of the warm copy (docs/two-phase.md): the image under
                # it changes now, and the cutover is converted afresh.
                if os.path.lexists(self.cap.file_path(converted_image_name(name))):
                    log.info("capture %s: the test conversion %s is removed (the warm copy changes now)",
                             self.cap.capture_id, converted_image_name(name))
                    self.cap.unlink(converted_image_name(name))
            self.cap.unlink("." + MANIFEST + ".tmp")    # a manifest a killed FINISH was writing
            for j in self.journals.values():
                name = j.header.name
                # what a receiver killed while making a --keep-raw copy left half-written
                self.cap.unlink("." + name + ".raw.tmp")
                self.files.append(image_name(name, hello.format))
            log.info("capture %s resumed in %s: %s", self.cap.capture_id, self.cap.path,
                     ", ".join(f"{n} {j.held} of {j.header.size} bytes" for n, j in self.journals.items())
                     or "nothing held")
        else:
            log.info("capture %s into %s", self.cap.capture_id, self.cap.path)
        for name, digests in maps.items():
            for reply in W.held_map_replies(name, self.delta_held[name].held().grid, digests):
                rx.say(reply)
        held_disks = {n: j.to_held() for n, j in self.journals.items()}
        held_disks.update({n: dh.held() for n, dh in self.delta_held.items()})
        self.held_names = {n: self.agent_names.get(n, n) for n in held_disks}
        held = {n: dataclasses.replace(hd, agent_name=self.held_names[n]).to_json()
                for n, hd in held_disks.items()}
        rx.say(P.Reply(P.Event.READY, capture_id=self.cap.capture_id, path=self.cap.path,
                       receiver_version=__version__, protocol=P.VERSION, held=held))

    @property
    def keeps_blocks(self) -> bool:
        """Whether this session's disks store their block digests (a later delta needs them)."""
        return self.hello.warm or self.warm is not None or bool(self.delta_held)

    def delta_maps(self) -> dict[str, bytes]:
        """The held maps of the disks a delta may be sent against: the warm copy's, and those of
        disks journaled in an earlier warm session (cut: below the journal's held end only)."""
        for name, j in list(self.journals.items()):
            if not W.BlockDigests.exists(self.cap, name):
                continue      # a capture begun cold: resumed as such
            h = j.header
            self.journals.pop(name)
            valid_to = h.size if j.complete is not None else j.held
            j.close()
            self.delta_held[name] = W.DeltaHeld(name, h.size, h.block_size, h.mode,
                                                image_name(name, self.hello.format), valid_to, dict(h.source))
        maps = {}
        for name, dh in self.delta_held.items():
            blocks = W.BlockDigests.open(self.cap, name, dh.size, dh.block_size)
            try:
                W.recover(self.cap, name, blocks)
                if dh.valid_to < dh.size:
                    blocks.invalidate(dh.valid_to, dh.size)
                    blocks.sync()
                maps[name] = blocks.held_map(dh.held().grid)
            finally:
                blocks.close()
        return maps

    def tidy_complete(self, capture_id: str) -> None:
        """A receiver killed after the rename that completed a capture, before it removed the
        journals in it: the capture is complete; the journals are litter, removed here."""
        validate_capture_id(capture_id)
        if not os.path.lexists(os.path.join(self.store.root, capture_id, MANIFEST)):
            return
        cap = self.store.open_capture(capture_id)
        try:
            gone = J.remove_all(cap)
            if gone:
                log.info("capture %s is complete; removed the resume journals left in it: %s",
                         capture_id, ", ".join(gone))
        finally:
            cap.close()

    def prove(self, headers: list[P.DiskHeader], hello: P.Hello) -> dict[str, str]:
        """Refuse (nothing changed) unless every held disk is one of the agent's, proven; the
        agent's name for each (held name -> its name now: the kernel may name it differently)."""
        pairing = identity.pair([identity.recorded(h) for h in headers], hello.identities)
        # A held disk this resume does not send would only be missed at FINISH, after all the
        # other data, and that refusal discards the capture (the verified disks too): refuse now,
        # before anything is sent or re-read, and keep what is held.
        left_out = sorted(h.name for h in headers if h.name not in pairing.names and h.name not in hello.disks)
        if left_out:
            raise ServerError(
                f"refused: capture {hello.capture_id} holds disk {', '.join(left_out)} from an "
                f"earlier attempt, which this resume does not send (it sends "
                f"{', '.join(hello.disks) or 'no disk'}): resume with every disk of the capture, "
                f"or start a new capture (a new id)", code="usage")
        if pairing.wrong:
            raise ServerError(
                f"refused: capture {hello.capture_id} holds disks this agent does not prove to be its own "
                f"({'; '.join(pairing.wrong)}); nothing was changed: resume it from the server it was captured "
                f"from, or start a new capture (a new id)", code="refused")
        for held, now in pairing.renamed.items():
            log.info("capture %s: its disk %s is %s on the agent now (proven by %s); it keeps the name %s",
                     hello.capture_id, held, now, pairing.how[held], held)
        return pairing.names

    def open_disk(self, h: P.DiskHeader) -> DiskState:
        if any(d.name == h.name for d in self.disks):
            raise ServerError(f"refused: disk {h.name} sent twice in one capture", code="bad_name")
        warm_restart = None
        dh = self.delta_held.get(h.name)
        if dh is not None:
            wrong = identity.mismatch(identity.recorded(dh.header()), identity.recorded(h))
            if wrong:
                raise ServerError(f"refused: {wrong}; the held copy is kept as it was", code="refused")
            if h.delta:
                return self.open_delta(h, dh)
            # Sent whole (its size changed, or the agent chose to): the held warm copy goes.
            warm_restart = h.restart_reason or "sent whole instead of as a delta"
            log.info("disk %s: the warm copy is dropped, the disk is sent whole: %s", h.name, warm_restart)
            del self.delta_held[h.name]
            for old in (dh.image, W.blocks_name(h.name), W.intent_name(h.name)):
                self.cap.unlink(old)
        elif h.delta:
            raise ServerError(f"refused: disk {h.name} comes as a delta, but this receiver holds no warm copy "
                              f"of it in capture {self.cap.capture_id}; send it whole", code="protocol")
        held = self.journals.get(h.name)
        name = image_name(h.name, self.hello.format)
        if held is not None:
            # The DISK header's own facts must be the proven disk's too (HELLO said the same).
            wrong = identity.mismatch(identity.recorded(held.header), identity.recorded(h))
            if wrong:
                raise ServerError(f"refused: {wrong}; the held copy is kept as it was", code="refused")
        j = self.journals.pop(h.name, None)
        if j is not None and h.resume_from:
            return self.resume_disk(h, j)
        if h.resume_from:
            raise ServerError(f"refused: disk {h.name} resumes at byte {h.resume_from} but this receiver "
                              f"holds nothing of it; send it from byte 0", code="protocol")
        if j is not None:
            # Sent again from 0 (the source changed, or the agent chose to): the held copy goes.
            log.info("disk %s restarted from byte 0: %s", h.name, h.restart_reason or "the agent asked")
            j.close()
            if h.name in self.rebuilt:
                self.rebuilt.pop(h.name)[0].close()
            for old in {name, (j.complete or {}).get("image")} - {None}:
                self.cap.unlink(old)
        self.preflight(h)
        if name not in self.files:
            self.files.append(name)
        image = self.new_image(name, h.size)
        d = DiskState(h, image, name, P.BlockTree(h.size, h.block_size),
                      restart_reason=h.restart_reason if j is not None else warm_restart)
        try:
            if self.keeps_blocks:
                d.blocks = W.BlockDigests.create(self.cap, h.name, h.size, h.block_size)
                d.tree = W.TeeTree.new(h.size, h.block_size, d.blocks)
            d.journal = J.DiskJournal.create(self.cap, h, capture=self.capture_facts())
            reader = image.reader()
        except BaseException:
            if d.blocks is not None:
                d.blocks.close()
            image.close()
            raise
        # last: nothing after it can fail and leave its thread behind (close_disk closes it)
        d.readback = Readback(reader, self.cap.file_path(name), h.size, h.block_size)
        return d

    def open_delta(self, h: P.DiskHeader, dh: W.DeltaHeld) -> DiskState:
        """A held warm disk, sent as a delta: written over in place, its tree fed from the records
        and, for SAME ranges, from the stored block digests; the read-back reads all of it."""
        if (h.size, h.block_size) != (dh.size, dh.block_size) or h.resume_from:
            raise ServerError(
                f"refused: disk {h.name} comes as a delta of {h.size} bytes in blocks of {h.block_size} from "
                f"byte {h.resume_from}, but the held copy is {dh.size} bytes in blocks of {dh.block_size} "
                f"(a delta starts at 0); send it whole", code="protocol")
        del self.delta_held[h.name]
        image = self.held_image(dh.image)
        try:
            blocks = W.BlockDigests.open(self.cap, h.name, h.size, h.block_size)
        except BaseException:
            image.close()
            raise
        d = DiskState(h, image, dh.image, W.TeeTree.new(h.size, h.block_size, blocks), blocks=blocks)

        def flush() -> None:
            image.flush()
            blocks.sync()

        try:
            d.delta = W.DeltaDisk(W.Intent(self.cap, h.name, flush, h.size, self.capture_facts()),
                                  P.grid_for(h.size, h.block_size))
            reader = image.reader()
        except BaseException:
            if d.delta is not None:
                d.delta.intent.close()
            blocks.close()
            image.close()
            raise
        d.counts.update(same_bytes=0, same_records=0)
        log.info("disk %s: sent as a delta against the held copy", h.name)
        d.readback = Readback(reader, self.cap.file_path(dh.image), h.size, h.block_size)
        return d

    def same(self, rec: P.Record) -> None:
        """SAME: the held bytes of the range are the source's. The agent's digest of its source's
        blocks must be the one of the block digests stored for them; those feed the whole-disk
        digest, and the read-back proves the image's bytes against it at END."""
        d = self.disk
        if d is None or d.delta is None or d.blocks is None:
            raise P.ProtocolError("SAME record outside a disk sent as a delta")
        if rec.length > P.MAX_SAME:
            raise P.ProtocolError(f"SAME record of {rec.length} bytes (at most {P.MAX_SAME})")
        d.tree._expect(rec.offset, rec.length)    # order, alignment, bounds, before any read
        stored = d.blocks.get(rec.offset, rec.length)
        if P.record_digest(stored) != rec.digest:
            d.blocks.invalidate(rec.offset, rec.offset + rec.length)
            d.blocks.sync()
            raise ServerError(
                f"disk {d.name}: the agent found bytes {rec.offset}-{rec.offset + rec.length} unchanged, but the "
                f"block digests held for them are not its source's (the held copy changed since its map was "
                f"sent); they are marked to be sent again: run the sync or the cutover again", code="corrupt")
        d.tree.add_same(rec.offset, rec.length, stored)
        d.counts["wire_bytes"] += rec.wire_bytes
        d.counts["same_bytes"] += rec.length
        d.counts["same_records"] += 1
        d.delta.same_bytes += rec.length
        d.delta.same_records += 1
        self.written(d)

    def capture_facts(self) -> dict:
        """What a journal keeps of the HELLO, for `coldclone-server status` while the capture runs.
        Its disks by their names in the capture (the agent's own names for them, as wire.capture_names
        gives them: a held disk the kernel names otherwise today is listed by its held name)."""
        size = self.hello.estimate.total_size if self.hello.estimate is not None else None
        ok = size is not None and 0 < size <= P.MAX_DISK_SIZE * P.MAX_DISKS
        disks = list(self.hello.disks)[:P.MAX_DISKS]
        named = P.capture_names(disks, self.held_names)
        return {"wave": self.hello.wave, "hostname": self.source_host(),
                "disks": [named[n] for n in disks], "size": size if ok else None}

    def source_host(self) -> str | None:
        host = self.hello.source.get("hostname")
        return host[:255] if isinstance(host, str) else None

    def new_image(self, name: str, size: int) -> Image:
        """A disk's empty image: the final qcow2 (through qemu), or a sparse raw file."""
        if self.hello.format == P.ImageFormat.QCOW2:
            return Qcow2Image.create(self.cap.path, self.cap.fd, name, size)
        fd = self.cap.create(name)
        os.ftruncate(fd, size)
        return RawImage(fd, self.cap.file_path(name))

    def held_image(self, name: str) -> Image:
        """A held disk's image, to continue writing it."""
        if not os.path.lexists(self.cap.file_path(name)):
            raise ServerError(f"the held image {self.cap.file_path(name)} is gone (or the capture was begun in "
                              f"another format than {self.hello.format}); start a new capture (a new id)",
                              code="journal")
        if self.hello.format == P.ImageFormat.QCOW2:
            # held by a receiver that was cut or killed mid-write: leaked clusters are freed first
            return Qcow2Image.open(self.cap.path, self.cap.fd, name, repair=True)
        return RawImage(self.cap.open_file(name), self.cap.file_path(name))

    def resume_disk(self, h: P.DiskHeader, j: J.DiskJournal) -> DiskState:
        """Continue a held disk at the byte the agent names: it must be exactly what is held."""
        held = j.header
        if (h.size, h.block_size, h.mode) != (held.size, held.block_size, held.mode):
            raise ServerError(
                f"refused: disk {h.name} resumes as {h.size} bytes in blocks of {h.block_size} (mode "
                f"{h.mode}), but the held copy is {held.size} bytes in blocks of {held.block_size} "
                f"(mode {held.mode}); send it from byte 0", code="protocol")
        want = held.size if j.complete is not None else j.held
        if h.resume_from != want:
            raise ServerError(f"refused: disk {h.name} resumes at byte {h.resume_from} but this receiver "
                              f"holds its bytes below {want}", code="protocol")
        if j.complete is not None:
            verified = j.complete.get("image")
            if not isinstance(verified, str) or not os.path.lexists(self.cap.file_path(verified)):
                raise ServerError(f"disk {h.name}: its verified image {verified} is gone from "
                                  f"{self.cap.path}; send the disk from byte 0", code="journal")
            d = DiskState(h, None, verified, P.BlockTree(h.size, h.block_size),
                          resumed_from=h.size, data_bytes_before=j.held_data_bytes, complete_entry=j.complete)
            return d
        image, tree = self.rebuilt.pop(h.name)
        d = DiskState(h, image, image_name(h.name, self.hello.format), tree, journal=j, resumed_from=j.held,
                      data_bytes_before=j.held_data_bytes)
        try:
            j.reopen()
            reader = image.reader()
        except BaseException:
            image.close()
            raise
        log.info("disk %s resumed at byte %d (%d data bytes held)", h.name, j.held, j.held_data_bytes)
        # The held part was just read back from the image (and checked against the journal)
        # to rebuild the tree: the read-back carries on from there.
        d.readback = Readback(reader, self.cap.file_path(d.image_name), h.size, h.block_size, tree=tree.copy())
        return d

    def rebuild(self, j: J.DiskJournal) -> tuple[Image, P.BlockTree]:
        """A held disk's image, cut to what the journal vouches for, and its tree rebuilt."""
        h = j.header
        name = image_name(h.name, self.hello.format)
        image = self.held_image(name)
        try:
            if image.size() != h.size:
                raise ServerError(f"disk {h.name}: the held image is {image.size()} bytes, not "
                                  f"{h.size}; start a new capture (a new id)", code="journal")
            # Bytes written after the last checkpoint are not vouched for: they go (the stream's
            # ZERO records write nothing, so nothing stale may stay past the held end).
            discard_from(image, j.held, h.size)
            image.flush()
            return image, J.rebuild_tree(image, j, self.cap.file_path(name))
        except BaseException:
            image.close()
            raise

    def written(self, d: DiskState) -> None:
        if d.readback is not None:
            d.readback.written(d.tree.pos)
        if d.delta is not None:
            d.delta.intent.progress(d.tree.pos)
        if d.journal is not None and d.journal.due(d.data_bytes_before + d.counts["data_bytes"]):
            if d.blocks is not None:
                d.blocks.sync()    # what the checkpoint vouches for, its digests with it
            d.journal.checkpoint(d.image, d.tree, d.data_bytes_before + d.counts["data_bytes"])

    def resume_facts(self, d: DiskState) -> DiskResume | Unset:
        """The manifest's `resume` of a disk that did not arrive in one go."""
        if not d.resumed_from and d.restart_reason is None:
            return UNSET
        return DiskResume(resumed_from=d.resumed_from, data_bytes_before=d.data_bytes_before,
                          restarted=d.restart_reason)

    def preflight(self, h: P.DiskHeader) -> None:
        """Refuse a disk up front when its data cannot fit, instead of failing at 90 %."""
        if h.data_bytes_estimate is None:
            return   # an agent that sends no estimate (older ones): the writes will tell
        data = h.data_bytes_estimate
        qcow2 = self.hello.format == P.ImageFormat.QCOW2
        need = P.space_needed(data, self.hello.format)
        if qcow2 and self.rx.keep_raw:
            need += data
        st = os.statvfs(self.cap.path)
        free = st.f_bavail * st.f_frsize
        if need > free:
            parts = (f"qcow2 image {human_bytes(need)}" if qcow2 else f"raw image {human_bytes(need)}") + \
                (" with its --keep-raw copy" if qcow2 and self.rx.keep_raw else "")
            raise ServerError(
                f"not enough space (disk full before a byte is written): "
                f"refused disk {h.name}: it needs about {human_bytes(need)} ({parts}, from the agent's "
                f"estimate of its non-zero bytes) but only {human_bytes(free)} are free in {self.cap.store.root}; "
                f"free space there or give the receiver a bigger --root", code="disk_full")

    def end(self, end: P.DiskEnd, wire_bytes: int) -> None:
        d = self.disk
        if d is None:
            raise P.ProtocolError("END record outside a disk")
        d.counts["wire_bytes"] += wire_bytes
        if d.complete_entry is not None:
            self.end_held(d, end)
            return
        if d.tree.pos != d.header.size:
            raise P.ProtocolError(f"END of disk {d.name} at byte {d.tree.pos} of {d.header.size}: records missing")
        got = d.tree.digest()
        if end.unreadable_bytes is not None and end.unreadable_bytes != d.counts["unreadable_bytes"]:
            raise P.ProtocolError(
                f"END of disk {d.name}: the agent counts {end.unreadable_bytes} unreadable bytes, "
                f"its UNREADABLE records {d.counts['unreadable_bytes']}")
        if got != end.digest:
            raise ServerError(
                f"disk {d.name}: whole-disk digest mismatch (agent {end.digest.hex()}, received "
                f"{got.hex()}); nothing was marked complete", code="corrupt")
        t_recv = time.monotonic() - d.started
        fmt = self.hello.format
        img_name = d.image_name
        path = self.cap.file_path(img_name)
        # From here on nothing grows with the disk: one flush (what the page cache holds), the
        # read-back's last step (it followed the writes), closing the image, and a qcow2's
        # metadata check.
        t_finish = t = time.monotonic()
        if d.journal is not None:
            # the checkpoint flushes the image first: what the journal vouches for is on disk
            d.journal.checkpoint(d.image, d.tree, d.data_bytes_before + d.counts["data_bytes"])
        else:
            d.image.flush()
        if d.delta is not None:
            d.delta.intent.progress(d.tree.pos, last=True)    # status: all data in, verifying
        if d.blocks is not None:
            d.blocks.sync()
        timings = {"receive_seconds": round(t_recv, 3), "flush_seconds": round(time.monotonic() - t, 3)}
        timings["readback_seconds"] = self._readback(d, path, got)
        t = time.monotonic()
        image, d.image = d.image, None
        image.close()
        timings["close_seconds"] = round(time.monotonic() - t, 3)
        checked = fmt == P.ImageFormat.QCOW2
        if checked:
            t = time.monotonic()
            Qcow2Image.check(path)
            timings["check_seconds"] = round(time.monotonic() - t, 3)
            if self.rx.keep_raw:
                # Asked for: a raw copy made from the verified qcow2 (and compared with it).
                t = time.monotonic()
                tmp = "." + d.name + ".raw.tmp"
                self.files.append(tmp)
                convert_to_raw(path, os.path.join(self.cap.path, tmp))
                os.rename(tmp, d.name + ".raw", src_dir_fd=self.cap.fd, dst_dir_fd=self.cap.fd)
                self.files.append(d.name + ".raw")
                timings["keep_raw_seconds"] = round(time.monotonic() - t, 3)
        if d.delta is not None:
            d.delta.intent.done()     # verified and on stable storage: nothing to invalidate
        # From the last record to a verified image: what the agent waits for after its last byte.
        timings["finish_seconds"] = round(time.monotonic() - t_finish, 3)
        # What this disk cost the conversion server's CPU, the receiver and qemu together
        # (make bench sets it beside the agent's CPU and the machine's).
        timings["cpu_seconds"] = round(_cpu_seconds() - d.cpu_started, 3)
        st = os.stat(img_name, dir_fd=self.cap.fd)
        h = d.header
        entry = ManifestDisk(
            name=d.name, image=img_name, format=fmt, size=h.size, digest=got.hex(),
            digest_algo=P.DIGEST_ALGO,
            verified=Verified(record_digests=True, disk_digest=True, readback_digest=True,
                              qemu_img_check=checked),
            logical_sector_size=h.logical_sector_size, physical_sector_size=h.physical_sector_size,
            block_size=h.block_size, mode=h.mode, codec=h.codec,
            image_bytes_allocated=st.st_blocks * 512, source=h.source, received=d.counts,
            agent=end.stats(), timings=timings,
            # Zero-filled in the image, covered by the digests as zeros (protocol.py, UNREADABLE).
            unreadable=d.unreadable_entry(), resume=self.resume_facts(d))
        self.count_two_phase(d, end, entry)
        if d.journal is not None:
            # a capture cut from here on keeps this disk as verified
            d.journal.mark_complete(records.encode(entry))
            d.journal.close()
        self.disks.append(entry)
        self.ends.append(end)
        self.disk = None
        log.info("disk %s verified: %s", d.name, img_name)
        self.rx.say(P.Reply(P.Event.DISK_OK, name=d.name, digest=got.hex(), image=img_name, counts=d.counts,
                            timings=timings))

    def count_two_phase(self, d: DiskState, end: P.DiskEnd, entry: ManifestDisk) -> None:
        """A warm sync's counts (the manifest's `syncs`), or a delta disk's cold phase (`cutover`)."""
        if d.blocks is None:
            return
        grid = P.grid_for(d.header.size, d.header.block_size)
        segments = d.delta.segments if d.delta is not None else -(-d.header.size // grid)
        if self.hello.warm:
            self.sync["bytes_read"] += end.bytes_read or 0
            self.sync["bytes_sent"] += d.counts["wire_bytes"]
            self.sync["segments_changed"] += segments
            self.sync["bytes_changed"] += min(segments * grid, d.header.size)
        elif d.delta is not None:
            entry.cutover = Cutover(bytes_read=end.bytes_read or 0, bytes_sent=d.counts["wire_bytes"],
                                    segments_sent=segments, seconds=round(time.monotonic() - d.started, 3))

    def _readback(self, d: DiskState, path: str, got: bytes) -> float:
        """The image as stored, hashed and held against what was received; its seconds."""
        t = time.monotonic()
        back = d.readback.digest()    # read back while the stream ran: only the tail is left
        d.readback.close()
        d.readback = None
        if back != got.hex():
            raise ServerError(
                f"disk {d.name}: the image read back from {path} does not match what was "
                f"received (digest {back}); check the conversion server's disk", code="io")
        return round(time.monotonic() - t, 3)

    def end_held(self, d: DiskState, end: P.DiskEnd) -> None:
        """END of a disk verified in an earlier attempt: the agent's digest of its source (read
        again) must be the one the image was verified against."""
        entry = records.decode(d.complete_entry, ManifestDisk, f"the journal of disk {d.name}")
        if end.digest.hex() != entry.digest:
            raise ServerError(
                f"disk {d.name}: the source's digest now ({end.digest.hex()}) is not the one of the "
                f"image verified earlier ({entry.digest}); send the disk from byte 0", code="corrupt")
        entry.resume = DiskResume(resumed_from=d.resumed_from, data_bytes_before=d.data_bytes_before,
                                  restarted=None, verified_earlier=True)
        entry.received = d.counts
        self.disks.append(entry)
        self.ends.append(end)
        self.disk = None
        log.info("disk %s: verified in an earlier attempt, source unchanged", d.name)
        self.rx.say(P.Reply(P.Event.DISK_OK, name=d.name, digest=entry.digest, image=entry.image,
                            counts=d.counts, timings={}))

    def finish(self) -> None:
        if self.disk is not None:
            raise P.ProtocolError(f"FINISH before END of disk {self.disk.name}")
        if self.journals:
            raise P.ProtocolError(f"FINISH without disk {', '.join(sorted(self.journals))} that the "
                                  f"receiver holds from an earlier attempt (send each disk of the capture)")
        if not self.disks:
            raise P.ProtocolError("FINISH without any disk")
        # A delta disk counts SAME records too; a disk sent whole beside it (new, or resized) has none.
        keys = dict.fromkeys(k for d in self.disks for k in d.received)
        totals = {k: sum(d.received.get(k, 0) for d in self.disks) for k in keys}
        totals["size"] = sum(d.size for d in self.disks)
        totals["stream_bytes"] = self.rx.reader.consumed
        totals["bytes_read"] = sum(e.bytes_read or 0 for e in self.ends)
        totals["unreadable_sectors"] = sum(d.unreadable.sectors for d in self.disks)
        hello = self.hello
        receive_seconds = round(time.monotonic() - self.rx.t0, 3)
        manifest = Manifest(
            capture_id=self.cap.capture_id, status="complete", disks=self.disks,
            started=self.rx.started, finished=_now(), receive_seconds=receive_seconds,
            source=hello.source, agent_version=hello.agent_version,
            receiver=ReceiverFacts(version=__version__, host=socket.gethostname(),
                                   python=platform.python_version(), qemu_img=qemu_img_version()),
            protocol=P.VERSION, totals=totals,
            wave=hello.wave if hello.wave is not None else UNSET)
        syncs = list(self.warm.syncs) if self.warm is not None and self.warm.syncs is not UNSET else []
        if hello.warm:
            manifest.phase = Phase.WARM
            syncs.append(Sync(time=_now(), seconds=receive_seconds, epoch=round(time.time(), 3), **self.sync))
        elif self.warm is not None or any(d.cutover not in (None, UNSET) for d in self.disks):
            manifest.phase = Phase.CUTOVER
        if syncs:
            manifest.syncs = syncs
        for dropped in hello.dropped:
            log.warning("%s; left out of the manifest", dropped)
        if hello.estimate is not None:
            # Predicted vs actual: what the agent estimated before the capture, next to how long
            # this end took from the first byte to the manifest (the agent adds its connect time).
            predicted = hello.estimate.total_seconds
            manifest.estimate = hello.estimate
            manifest.estimate_vs_actual = EstimateVsActual(
                predicted_seconds=predicted, actual_seconds=receive_seconds,
                ratio=round(receive_seconds / predicted, 3) if predicted > 0 else None)
        if hello.readiness is not None:
            # typed on the way in (HELLO's decoder): conversion and publishing read a valid report;
            # its root disk by the capture's name for it (the agent's may differ: a held disk)
            captured_as = {identity.agent_name(d.name, d.source): d.name for d in self.disks}
            ready = hello.readiness
            manifest.readiness = (dataclasses.replace(ready, disk=captured_as[ready.disk])
                                  if ready.disk in captured_as and captured_as[ready.disk] != ready.disk else ready)
        document = records.encode(manifest)
        self.cap.write_atomic(MANIFEST, P.dumps(document, indent=2, sort_keys=True).encode() + b"\n")
        self.cap.unlink(W.WARM)    # the new manifest replaces the warm copy's (receive/warm.py)
        W.remove_intents(self.cap)  # every delta disk is verified: its progress file says no more
        self.close_journals()
        path = self.cap.complete()
        # Only now, inside the complete capture: until the rename the journals are what lets a
        # receiver killed here be resumed straight to FINISH; a kill during their removal leaves a
        # complete capture with a journal or two in it (removed at the next resume of its id).
        try:
            J.remove_all(self.cap)
        except OSError as e:
            log.error("capture %s is complete, but its resume journals could not be removed: %s", path, e)
        log.info("capture %s complete: %s", self.cap.capture_id, path)
        # with --convert the conversion starts once this session ends: say now where its images
        # will be, the agent's summary is the operator's last look at this capture
        converted = (tuple(os.path.join(path, converted_image_name(d.name)) for d in self.disks)
                     if self.rx.convert else ())
        self.rx.say(P.Reply(P.Event.COMPLETE, path=path, manifest=document, converted_images=converted))

    def abort(self, reason: str) -> int:
        raise ServerError(f"the agent aborted the capture: {reason}", code="aborted")


    def close_journals(self) -> None:
        if self.disk is not None and self.disk.journal is not None:
            self.disk.journal.close()
        for j in self.journals.values():
            j.close()
        for image, _ in self.rebuilt.values():
            image.close()
        self.rebuilt.clear()

    def fail(self, code: str, message: str, cut: bool = False) -> str | None:
        """An interrupted stream (cut) keeps what the journals vouch for, to be resumed; anything
        else (ABORT, a malformed or corrupt stream, a refusal, a full disk) discards the images."""
        cap = self.cap
        d = self.disk
        held: dict[str, int] = {}
        # A refusal (code `refused`: the agent did not prove a held disk its own) changes nothing
        # held either: what the journals vouch for stays for the server it belongs to.
        resumable = (cut or code == "refused") and (
            bool(self.journals) or bool(self.disks) or (d is not None and d.journal is not None))
        # A warm capture being updated is the operator's head start: whatever failed, it is kept
        # (its block digests past the last flush are invalidated when it is opened again).
        resumable = resumable or self.warm is not None
        # A stream that ended between records (code protocol: the reader's StreamCut) leaves the
        # tree at what is written: one last checkpoint is safe. A SessionEnded comes from a signal
        # handler and may land mid-record: after it the last periodic checkpoint stands.
        if resumable and d is not None and d.journal is not None and d.image is not None and code == "protocol":
            try:
                d.journal.checkpoint(d.image, d.tree, d.data_bytes_before + d.counts["data_bytes"])
            except OSError as e:
                log.error("last checkpoint of disk %s failed: %s", d.name, e)
        self.close_journals()
        self.close_disk()
        if resumable:
            # The journals vouch for what is held: keep it for `coldclone capture --resume`.
            # Only temp files (a --keep-raw copy cut short) go.
            for name in self.files:
                if name.endswith(".tmp"):
                    cap.unlink(name)
            try:
                held = {j.header.name: j.held for j in J.load_all(cap).values()}
            except ServerError as e:
                log.error("%s", e)
        else:
            # Half-written images and temp files are useless and may hold the space that ran out.
            for name in self.files:
                try:
                    cap.unlink(name)
                except (OSError, ServerError) as e:
                    log.error("could not remove %s: %s", name, e)
            J.remove_all(cap)
        record = FailureRecord(code=code, error=message, capture_id=cap.capture_id, started=self.rx.started,
                               failed=_now(), disks_verified=[d.name for d in self.disks],
                               resumable=resumable, held=held,
                               # what status shows of a capture whose journals are gone
                               **self.capture_facts())
        try:
            cap.write_atomic(FAILURE, records.dumps(record, indent=2).encode() + b"\n")
        except OSError as e:
            log.error("could not write failure.json: %s", e)
        cap.unlock()
        return cap.path

    def close(self) -> None:
        self.close_journals()
        super().close()
        self.cap.close()
        self.store.close()


class ProbeSink(_Sink):
    """A calibration probe: no capture directory, nothing named in the root, ever."""

    def __init__(self, rx: "Receiver", hello: P.Hello):
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
        unfinished = {}
        if hello.unfinished_of:
            # A lookup: the agent asks what it could resume, then ends the session (ABORT).
            found = find_unfinished(store.root, hello.unfinished_of)
            unfinished = {u.capture_id: u.to_json() for u in found}
            log.info("lookup of unfinished captures of %s: %s", ", ".join(d.name for d in hello.unfinished_of),
                     ", ".join(unfinished) or "none")
        else:
            log.info("calibration probe into %s (nothing is kept)", store.root)
        load = server_load(rx.forced_root, bwlimit=rx.bwlimit, max_conversions=rx.max_conversions)
        rx.say(P.Reply(P.Event.READY, capture_id=None, path=store.root, probe=True,
                       receiver_version=__version__, protocol=P.VERSION, unfinished=unfinished,
                       load=load.to_json()))

    def open_disk(self, h: P.DiskHeader) -> DiskState:
        if h.resume_from:
            raise P.ProtocolError("a calibration probe cannot resume")
        self.t0 = time.monotonic()
        return DiskState(h, RawImage(os.dup(self.fd), "the probe's file"), h.name + ".raw",
                         P.BlockTree(h.size, h.block_size))

    def written(self, d: DiskState) -> None:
        if d.counts["data_bytes"] - self.synced >= PROBE_SYNC_BYTES:
            # The page cache would take a short probe at memory speed: sync as we go, so the
            # probe measures what the disk sustains over a whole capture.
            t = time.monotonic()
            d.image.flush()
            self.sync_seconds += time.monotonic() - t
            self.synced = d.counts["data_bytes"]

    def finish(self) -> None:
        """How fast this end took the probe's records: verified, written and on the disk (fsync)."""
        d = self.disk
        if d is None or self.t0 is None:
            raise P.ProtocolError("probe FINISH without a DISK")
        t = time.monotonic()
        os.fsync(d.image.fd)
        self.sync_seconds += time.monotonic() - t
        seconds = time.monotonic() - self.t0
        # Read back and hash what was written, as END does for a capture: its rate feeds the
        # estimate of the time the server verifies and converts after the last byte.
        t, off = time.monotonic(), 0
        while off < d.tree.pos:
            buf = d.image.pread(min(P.DEFAULT_CHUNK_SIZE, d.tree.pos - off), off)
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
                 convert: bool = False, bwlimit: int | None = None, max_conversions: int | None = None):
        self.forced_root = root
        self.requested_root = requested_root
        self.out = out
        self.keep_raw = keep_raw
        self.convert = convert        # a conversion is queued after a complete capture (--convert)
        # told to agents that ask where to capture (READY.load): this server's caps
        self.bwlimit = bwlimit
        self.max_conversions = max_conversions
        self.sink: _Sink | None = None
        self.started = _now()
        self.t0 = time.monotonic()
        self.reader: P.Reader | None = None
        self.failing = False          # a failure is being recorded (_fail): see cli.Session.spare

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
        except P.StreamCut as e:
            where = self.sink.where() if self.sink else ""
            self._fail("protocol", f"{e}{where}", cut=True)
        except P.ProtocolError as e:
            where = self.sink.where() if self.sink else ""
            self._fail("protocol", f"{e}{where}")
        except ServerError as e:
            self._fail(e.code, str(e))
        except SessionEnded as e:
            self._fail("session_ended", str(e), cut=True)
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
        self.sink = sink = ProbeSink(self, hello) if hello.probe else CaptureSink(self, hello)
        with Prefetch(reader) as records:
            return self._records(sink, records)

    def _records(self, sink: _Sink, records: Prefetch) -> int:
        while True:
            rec = records.read()
            if rec.type == P.T_DISK:
                sink.disk_header(P.DiskHeader.decode(rec.meta))
            elif rec.type in (P.T_DATA, P.T_ZERO):
                sink.extent(rec)
            elif rec.type == P.T_SAME:
                sink.same(rec)
            elif rec.type == P.T_UNREADABLE:
                sink.unreadable(rec)
            elif rec.type == P.T_END:
                sink.end(P.DiskEnd.decode(rec.digest, rec.meta), rec.wire_bytes)
            elif rec.type == P.T_FINISH:
                sink.finish()
                return 0
            elif rec.type == P.T_NOOP:
                continue      # the agent is alive (re-checking a source before resuming)
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

    def _fail(self, code: str, message: str, cut: bool = False) -> None:
        """cut: the stream was interrupted (not malformed, not refused): what is held may be resumed."""
        self.failing = True
        log.error("%s: %s", code, message)
        path = None
        if self.sink is not None:
            try:
                path = self.sink.fail(code, message, cut)
            except BaseException as e:  # cleaning up must not hide the first error
                log.error("cleanup after %s failed: %r", code, e)
        self.say(P.Reply(P.Event.ERROR, code=code, message=message, path=path))
