"""One capture, start to end: guard the sources, stream every disk, get the receiver's verdict.

Front ends (headless CLI, TUI) call run_capture() and get typed events
through `on_event`; they never see the protocol or the transport.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ... import __version__
from ... import protocol as P
from ...bwlimit import TokenBucket, paced
from ...errors import (
    EXIT_OK,
    EXIT_UNREADABLE,
    CancelledError,
    ColdcloneError,
    ConnectionError_,
    ServerError,
    UsageError,
)
from ... import records
from ...estimate_model import CaptureEstimate
from ...guestos.report import ReadinessReport
from ...manifest import Manifest, ManifestDisk, PublishRecord
from ...units import human_bytes as hb
from ...units import human_rate
from ...units import human_seconds as hs
from ..transport.base import Connection
from . import events as E
from . import inuse
from .guard import ReadOnlyGuard, device_tree
from .resume import DiskResume, plan_resume
from .source import SourceDisk, probe
from .stream import DiskStats, StreamOptions, stream_disk

log = logging.getLogger("coldclone.capture")

# How long to wait for the receiver's verdict after the last byte: it still
# has to read back, convert and compare every disk.
FINAL_REPLY_TIMEOUT = 6 * 3600
# After FINISH the receiver writes the manifest and renames the staging directory: seconds.
COMMIT_REPLY_TIMEOUT = 600
# READY of a resumed capture comes after the receiver has re-read what it holds (at its disk's
# speed: an hour is ~200 GB at 60 MB/s).
RESUME_READY_TIMEOUT = 3600
# While the agent re-reads a source before resuming, a NOOP this often keeps the receiver's
# --idle-timeout (600 s by default) from ending the session.
NOOP_INTERVAL = 30.0


@dataclass
class CaptureResult:
    capture_id: str
    target: str
    location: str
    manifest: Manifest          # what the receiver wrote, as its COMPLETE reply carried it
    elapsed: float
    bytes_read: int
    wire_bytes: int
    zero_bytes: int
    total_size: int
    # where the receiver's queued conversion will write the KVM images (empty: no conversion)
    converted_images: tuple[str, ...] = ()
    publish: PublishRecord | None = None    # the Glance image, when the server published it already

    @property
    def disks(self) -> list[ManifestDisk]:
        return self.manifest.disks

    @property
    def unreadable_sectors(self) -> int:
        """Sectors no read could get, zero-filled in the images (the receiver's count, from the
        UNREADABLE records it checked; the manifest lists them per disk)."""
        return sum(d.unreadable.sectors for d in self.disks)

    @property
    def exit_code(self) -> int:
        """0 for a clean copy; EXIT_UNREADABLE when sectors are missing, never a plain success."""
        return EXIT_UNREADABLE if self.unreadable_sectors else EXIT_OK

    def verdict(self) -> str:
        """How the end of a capture is worded everywhere (console, headless, TUI)."""
        n = self.unreadable_sectors
        return f"verified with {n} unreadable sector{'s' if n != 1 else ''}" if n else "verified"

    def conversion_lines(self) -> list[str]:
        """Where the converted images will be, for the headless summary and the TUI's Done
        screen alike; nothing when the receiver converts nothing."""
        if not self.converted_images:
            return []
        return (["conversion queued on the conversion server (coldclone-convert); the KVM image"
                 + ("s" if len(self.converted_images) > 1 else "") + " will be:"]
                + [f"  {p}" for p in self.converted_images]
                + ["  (its result, every fix applied: the `conversion` section of manifest.json there)"])

    def summary_lines(self, estimate: CaptureEstimate | None = None) -> list[str]:
        """The one result summary: the console's last lines and the TUI's Done screen; with the
        estimate, its total against the time taken (and its caveat, when it has one)."""
        predicted_seconds = estimate.total_seconds if estimate is not None else None
        el = max(self.elapsed, 1e-9)
        out = [f"capture {self.capture_id} complete in {hs(self.elapsed)} ({self.elapsed:.1f} s): {self.verdict()}",
               f"  where:   {self.location}",
               f"  read:    {hb(self.bytes_read)} at {human_rate(self.bytes_read / el)} MB/s",
               f"  wire:    {hb(self.wire_bytes)} ({100.0 * self.wire_bytes / max(self.total_size, 1):.1f}% "
               f"of {hb(self.total_size)}), skipped {hb(self.zero_bytes)} of zeros"]
        if predicted_seconds:
            # The estimate is made before the server says what it holds: for the whole capture.
            held = sum(d.resume.resumed_from for d in self.disks if d.resume and not d.resume.restarted)
            tail = f"; {hb(held)} were held from an earlier attempt" if held else ""
            tail += f"; {estimate.caveat}" if estimate.caveat else ""
            out.append(f"  estimate: {predicted_seconds:.1f} s predicted, {self.elapsed:.1f} s actual "
                       f"({100.0 * (self.elapsed - predicted_seconds) / predicted_seconds:+.0f}%{tail})")
        for d in self.disks:
            out.append(f"  {d.name}: {d.image}, digest {d.digest[:16]}...")
            out.append(f"    verified: {', '.join(d.verified.proven()) or 'nothing'}")
            bad = d.unreadable
            if bad.sectors:
                shown = ", ".join(f"{r.start_sector}+{r.sectors}" for r in bad.ranges[:8])
                more = f" and {len(bad.ranges) - 8} more ranges" if len(bad.ranges) > 8 else ""
                out.append(f"  {d.name}: {bad.sectors} UNREADABLE sectors of {bad.sector_size} bytes in "
                           f"{len(bad.ranges)} ranges (zeros in the image; start+count: {shown}{more}; "
                           f"manifest.json lists them all)")
        out += [f"  {line}" for line in self.conversion_lines()]
        boot = self.publish.boot if self.publish is not None else None
        if boot is not None:
            test = (f" as a TEST launch of warm sync {self.publish.sync} (crash-inconsistent, not the migration)"
                    if self.publish.test else "")
            out.append(f"  published to Glance ({self.publish.cloud}){test}: image {boot.image_id}")
            out.append(f"    the {boot.image_kind} image, checksum {boot.checksum}")
            for img in self.publish.data:
                out.append(f"    data disk {img.disk}: image {img.image_id}")
        return out


class CaptureCancelled(CancelledError):
    """The capture was stopped (Ctrl-C, a signal, the TUI's cancel). aborted_on_server: the
    receiver had the capture open and was sent ABORT (it discards the partial capture)."""

    def __init__(self, message: str, *, aborted_on_server: bool):
        super().__init__(message)
        self.aborted_on_server = aborted_on_server


def new_capture_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "server"
    return f"{host}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


class _Replies:
    """The receiver's replies, with the first error kept for when a send fails."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.error: P.Reply | None = None
        self.closed = False
        self.verified: list[str] = []       # names of the disks the receiver answered DISK_OK for
        # HELD_MAP replies before READY of a delta resume: disk -> (grid, [(start, digests hex)])
        self.held_maps: dict[str, tuple[int, list[tuple[int, str]]]] = {}

    def poll(self) -> None:
        """Raise at once if the receiver has already reported an error."""
        while True:
            try:
                msg = self.conn.pump.queue.get_nowait()
            except queue.Empty:
                return
            self._take(msg)

    def _take(self, msg: dict | None) -> P.Reply | None:
        if msg is None:
            self.closed = True
            return None
        reply = P.Reply.from_json(msg)
        if reply.event == P.Event.ERROR:
            self.error = reply
            raise self.as_error()
        if reply.event == P.Event.DISK_OK and reply.name:
            self.verified.append(reply.name)
        if reply.event == P.Event.HELD_MAP and reply.name and reply.grid and reply.digests is not None:
            self.held_maps.setdefault(reply.name, (reply.grid, []))[1].append((reply.start or 0, reply.digests))
        return reply

    def held_map(self, held: P.HeldDisk) -> P.HeldMap:
        """A held disk's map, from its HELD_MAP replies (a ServerError when they do not add up)."""
        grid, parts = self.held_maps.get(held.name, (held.grid, []))
        try:
            digests = bytearray()
            for start, hexed in sorted(parts):
                if start * 32 != len(digests):
                    raise P.ProtocolError(f"its map has a gap or an overlap at segment {start}")
                digests += bytes.fromhex(hexed)
            if grid != held.grid:
                raise P.ProtocolError(f"its map's grid {grid} is not READY's {held.grid}")
            return P.HeldMap(held.size, held.block_size, grid, bytes(digests))
        except (P.ProtocolError, ValueError) as e:
            raise ServerError(f"conversion server: the held map of disk {held.name} is malformed ({e})",
                              code="protocol") from None

    def as_error(self) -> ServerError:
        m = self.error or P.Reply(P.Event.ERROR)
        text = m.message or "failed"
        if not text.startswith("conversion server"):
            text = "conversion server: " + text
        return ServerError(text, code=m.code or "server_error")

    def wait_for(self, events: tuple[str, ...], timeout: float,
                 cancel: threading.Event | None = None) -> P.Reply:
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline, timeout, cancel)
            if reply.event in events:
                return reply

    def wait_verified(self, names: list[str], timeout: float, cancel: threading.Event | None) -> None:
        """Until the receiver has verified (DISK_OK) every disk in `names`."""
        deadline = time.monotonic() + timeout
        while not set(names) <= set(self.verified):
            self._next(deadline, timeout, cancel)

    def _next(self, deadline: float, timeout: float, cancel: threading.Event | None) -> P.Reply:
        """The next reply, or ServerError at the deadline, CancelledError on a stop."""
        while True:
            # A stop (Ctrl-C, SIGTERM) while the server verifies must not wait hours for it.
            if cancel is not None and cancel.is_set():
                raise CancelledError("capture cancelled by the operator")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"no answer from the conversion server within {timeout:.0f} s", code="timeout")
            try:
                msg = self.conn.pump.queue.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            msg = self._take(msg)
            if msg is None:
                raise self.gone()
            return msg

    def drain(self, timeout: float) -> ColdcloneError | None:
        """Read replies until the receiver hangs up: its error if it gave one, else why it went.

        None if it is still talking after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.conn.pump.queue.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            try:
                if self._take(msg) is None:
                    return self.gone()
            except ServerError as e:
                return e
        return None

    def after_send_failure(self, exc: BaseException) -> ColdcloneError:
        """A send failed: the receiver usually said why before it hung up; give it a moment."""
        return self.drain(timeout=5) or ConnectionError_(
            f"connection to the conversion server lost while sending ({exc}); "
            f"check the network, then capture again")

    def gone(self) -> ColdcloneError:
        """The receiver's output ended without a verdict: say what we know."""
        if self.error:
            return self.as_error()
        err = self.conn.stderr_text().strip()
        status = self.conn.exit_status(timeout=2)
        last = " | ".join(err.splitlines()[-3:])
        # A shell's complaint, not a line of the receiver's own log.
        if status == 127 or re.search(r"^(?!coldclone-receive: ).*coldclone-receive.*(not found|No such file)",
                                      err, re.M):
            return ServerError(
                f"coldclone-receive is not installed on the conversion server ({last}); install it "
                f"there (pip install coldclone) and use a forced-command key", code="no_receiver")
        if status is not None and status >= 0 and err:
            return ServerError(f"conversion server ended the session (exit {status}): {last}", code="server_error")
        return ConnectionError_(
            f"connection to the conversion server lost (no verdict from the receiver"
            f"{'; its last words: ' + last if last else ''}); check the network and the server, "
            f"then capture again")


@dataclass
class CaptureRequest:
    """What one capture is asked to do: run_capture's one argument (the job, the TUI and the tests
    build it). `connect` opens a session to the receiver (a Target's connect)."""

    disks: list[str]                              # source paths
    connect: Callable[[], Connection]
    opts: StreamOptions = field(default_factory=StreamOptions)
    capture_id: str | None = None                 # None: a new id
    image_format: str = "qcow2"
    source_facts: dict = field(default_factory=dict)   # for the manifest (the inventory ...)
    # The pre-capture estimate (the manifest keeps it; its non-zero bytes per disk go in each DISK
    # header so the receiver can refuse up front when its disk cannot hold them).
    estimate: CaptureEstimate | None = None
    readiness: ReadinessReport | None = None      # the inspection made before the capture
    allow_mounted: bool = False                   # capture a source in use (the manifest says so)
    # Continue an unfinished capture of capture_id the receiver holds (agent.source.capture.resume
    # checks the source against it; what matches is not sent again).
    resume: bool = False
    reconnect_seconds: float = 0.0   # after a dropped session, reconnect and resume this long (0: fail)
    # Data unacknowledged this long means the link is dead: the session is dropped (and reconnected,
    # with resume), instead of waiting for TCP to give up (15 minutes and more).
    stall_seconds: float = 120.0
    wave: str | None = None                       # the label the manifest carries (coldclone.wave=)
    # Bytes per second the stream may use on average: a token bucket over every session of the
    # capture (coldclone.bwlimit=).
    bwlimit: int | None = None
    # Asked with a server's refusal (its disk is full): True when the next connect goes to another
    # server (capture/placement.py), so the capture goes on there.
    failover: Callable[[BaseException], bool] | None = None


def run_capture(req: CaptureRequest, *, on_event: Callable[[object], None] = lambda e: None,
                cancel: threading.Event | None = None) -> CaptureResult:
    """Capture req.disks; every step is an event to `on_event`; `cancel` stops it at a record
    boundary (the receiver discards the partial capture, or keeps it to resume)."""
    opts, resume, estimate = req.opts, req.resume, req.estimate
    wave, bwlimit, failover = req.wave, req.bwlimit, req.failover
    data_estimates = {d.path: d.data_bytes for d in estimate.disks} if estimate is not None else {}
    opts.validate()
    if not req.disks:
        raise UsageError("no source disk given: name at least one with --disk /dev/X")
    sources: list[SourceDisk] = [probe(p) for p in req.disks]
    names = [s.name for s in sources]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise UsageError(f"disk {', '.join(sorted(dups))} named twice")
    capture_id = req.capture_id or new_capture_id()
    total = sum(s.size for s in sources)
    t0 = time.monotonic()
    if cancel is not None and cancel.is_set():   # stopped before anything started
        raise CaptureCancelled("capture cancelled before it started", aborted_on_server=False)
    what = "capture " + ", ".join(req.disks)
    tree = device_tree([s.path for s in sources])
    # Before the guard: setting a device read-only under a read-write mount would make the
    # running filesystem fail its own writes.
    in_use = inuse.check(tree, what=what, allow=req.allow_mounted)
    source_facts = dict(req.source_facts)
    if req.allow_mounted:
        # The manifest says the operator chose to capture a source that may be changing.
        source_facts["allow_mounted_source"] = {"in_use": [f.describe() for f in in_use]}

    with ReadOnlyGuard([s.path for s in sources]) as guard:
        log.info("read-only guard on: %s", ", ".join(guard.guarded))
        # Again with the guard on, closing the window between the check and BLKROSET (no
        # read-write mount or write-open can start now).
        late = [f for f in inuse.scan(tree) if f not in in_use]
        if late:
            inuse.check_found(late, what=what, allow=req.allow_mounted)
            source_facts["allow_mounted_source"]["in_use"] += [f.describe() for f in late]
        for s in sources:
            s.read_head()    # the proof a resume gives the receiver (HELLO.identities, DISK source)
        sent = {"wire": 0}
        totals = DiskStats()
        if estimate is not None:
            try:
                records.dumps(estimate)
            except (TypeError, ValueError) as e:
                # The estimate is advice for the manifest: one that is not strict JSON (NaN, an
                # infinite rate) must not stop the capture.
                log.warning("estimate left out of the manifest: %s", e)
                estimate = None
        hello = P.Hello(capture_id=capture_id, agent_version=__version__, format=req.image_format,
                        source={"hostname": socket.gethostname(), **(source_facts or {})},
                        disks=tuple(names), estimate=estimate, readiness=req.readiness, resume=resume,
                        wave=wave, identities=tuple(s.identity() for s in sources),
                        # a resume takes a warm capture as a delta (docs/two-phase.md)
                        delta=resume)
        bucket = TokenBucket(bwlimit) if bwlimit else None

        def attempt(conn: Connection, hello: P.Hello) -> tuple[P.Reply, str]:
            """One session: HELLO to COMPLETE; (final reply, capture location)."""
            replies = _Replies(conn)
            conn.dead_link_after(req.stall_seconds)
            last_send = [time.monotonic()]

            to_server = paced(conn.send, bucket) if bucket is not None else conn.send

            def send(data: bytes) -> None:
                replies.poll()
                try:
                    to_server(data)
                except (BrokenPipeError, OSError, ValueError) as e:
                    raise replies.after_send_failure(e) from None
                sent["wire"] += len(data)
                last_send[0] = time.monotonic()

            writer = P.StreamWriter(send)

            def keepalive() -> None:
                if time.monotonic() - last_send[0] >= NOOP_INTERVAL:
                    writer.noop()

            try:
                writer.hello(hello)
                ready = replies.wait_for((P.Event.READY,), timeout=RESUME_READY_TIMEOUT if hello.resume else 60,
                                         cancel=cancel)
                try:
                    held = P.decode_held(ready.held)
                except P.ProtocolError as e:
                    raise ServerError(f"conversion server: {e}", code="protocol") from None
                location = ready.path or ""
                # The name each disk has in this capture: a held disk's may not be the kernel's today.
                as_named = P.capture_names(names, {n: h.agent_name for n, h in held.items()})
                on_event(E.CaptureStarted(capture_id, conn.description, sources, total))
                done_before = 0
                bad_before = 0
                for src in sources:
                    on_event(E.DiskStarted(src.name, src.path, src.size))
                    name = as_named[src.name]
                    h = held.get(name)
                    if name != src.name:
                        on_event(E.ServerNote(f"{src.path} is disk {name} of capture {capture_id} (its name there; "
                                              f"the kernel names it {src.name} today)"))
                    held_map = None
                    if h is not None and h.grid:
                        # A warm copy (docs/two-phase.md): sent as a delta when it is this disk's size
                        # and block size, else whole (the receiver drops the warm copy).
                        if (h.size, h.block_size) == (src.size, opts.block_size):
                            held_map = replies.held_map(h)
                            plan = DiskResume()
                        else:
                            plan = DiskResume(restart_reason=(
                                f"the warm copy is {h.size} bytes in blocks of {h.block_size}; the disk is now "
                                f"{src.size} bytes in blocks of {opts.block_size}"))
                    else:
                        plan = plan_resume(src, opts, h, cancel, tick=keepalive)
                    if h is not None:
                        on_event(E.DiskResumed(src.name, plan.start, src.size, plan.checked_bytes, plan.seconds,
                                               plan.restart_reason))
                    writer.disk(P.DiskHeader(
                        name=name, size=src.size, block_size=opts.block_size,
                        logical_sector_size=src.logical_sector_size,
                        physical_sector_size=src.physical_sector_size,
                        mode=opts.mode, codec=opts.codec_label(), source=src.facts(),
                        data_bytes_estimate=data_estimates.get(src.path),
                        resume_from=plan.start, restart_reason=plan.restart_reason, delta=held_map is not None))

                    def on_chunk(pos: int, st: DiskStats, src=src, base=done_before, bad_before=bad_before) -> None:
                        on_event(E.Progress(
                            disk=src.name, disk_done=pos, disk_size=src.size, total_done=base + pos,
                            total_size=total, bytes_read=totals.bytes_read + st.bytes_read,
                            wire_bytes=sent["wire"], zero_bytes=totals.zero_bytes + st.zero_bytes,
                            elapsed=time.monotonic() - t0,
                            unreadable_sectors=bad_before + st.unreadable_sectors(src.logical_sector_size)))

                    digest, st = stream_disk(src, send, opts, on_chunk=on_chunk, cancel=cancel, resume=plan.tree,
                                             held=held_map)
                    writer.end(P.DiskEnd(digest, **st.as_dict()))
                    for k in ("bytes_read", "data_bytes", "zero_bytes", "payload_bytes", "wire_bytes"):
                        setattr(totals, k, getattr(totals, k) + getattr(st, k))
                    done_before += src.size
                    bad_before += st.unreadable_sectors(src.logical_sector_size)
                    on_event(E.DiskFinished(src.name, digest.hex(), st.as_dict()))
                on_event(E.ServerNote("all data sent; the server is verifying and converting"))
                # FINISH only once every disk is verified: until then a stop still reaches the
                # receiver as ABORT and it discards the capture. After FINISH it only renames the
                # staging directory, so a stop that late cannot undo the capture and is not waited on.
                replies.wait_verified(list(as_named.values()), timeout=FINAL_REPLY_TIMEOUT, cancel=cancel)
                writer.finish()
                conn.close_write()
                final = replies.wait_for((P.Event.COMPLETE,), timeout=COMMIT_REPLY_TIMEOUT)
                if cancel is not None and cancel.is_set():
                    on_event(E.ServerNote("the stop came after the server had verified every disk: "
                                          "the capture is complete"))
                return final, location
            except (CancelledError, ColdcloneError, KeyboardInterrupt) as e:
                if not (resume and _retryable(e)):
                    # Without resume (or after a refusal) the receiver discards what it got.
                    _abort(conn, replies, e)
                if isinstance(e, (CancelledError, KeyboardInterrupt)):
                    raise CaptureCancelled(str(e) or "capture cancelled by the operator",
                                           aborted_on_server=True) from None
                raise
            finally:
                conn.close()

        retry = _Reconnect(req.reconnect_seconds if resume else 0.0, cancel)
        while True:
            try:
                conn = req.connect()
            except ConnectionError_ as e:
                # Only a reconnect retries a failed req.connect: the first one fails as before.
                if not retry.attempts or not retry.wait(e, on_event):
                    raise
                continue
            try:
                final, location = attempt(conn, hello)
                break
            except ColdcloneError as e:
                # another server takes it at once when this one refused for lack of space
                moved = failover is not None and failover(e)
                if not moved and (not _retryable(e) or not retry.wait(e, on_event)):
                    raise
                # The session that dropped may have delivered any part: ask what is held now.
                hello = dataclasses.replace(hello, resume=True, delta=True)

    try:
        manifest = Manifest.load(final.manifest or {}, "the receiver's manifest")
    except ColdcloneError as e:
        raise ServerError(f"conversion server: capture {capture_id} completed, but its manifest in the "
                          f"reply is malformed ({e}); read manifest.json in {final.path or location}",
                          code="protocol") from None
    result = CaptureResult(
        capture_id=capture_id,
        target=conn.description,
        location=final.path or location,
        manifest=manifest,
        elapsed=time.monotonic() - t0,
        bytes_read=totals.bytes_read,
        wire_bytes=sent["wire"],
        zero_bytes=totals.zero_bytes,
        total_size=total,
        converted_images=final.converted_images,
        publish=PublishRecord.from_document(final.manifest),
    )
    on_event(E.CaptureFinished(result))
    return result


def _retryable(e: BaseException) -> bool:
    """A dropped session, or a receiver still busy with the session that dropped: worth a reconnect.
    A refusal or a verdict of the receiver (corrupt, disk full, bad name ...) is not."""
    return isinstance(e, ConnectionError_) or (isinstance(e, ServerError) and e.code in ("busy", "session_ended"))


class _Reconnect:
    """Backoff between reconnect attempts (1, 2, 4 ... 30 s), within a total time budget."""

    def __init__(self, budget: float, cancel: threading.Event | None):
        self.budget = budget
        self.cancel = cancel
        self.attempts = 0
        self.started: float | None = None

    def wait(self, err: BaseException, on_event) -> bool:
        """Sleep before the next attempt; False when the budget is spent (the caller raises)."""
        if self.budget <= 0:
            return False
        now = time.monotonic()
        if self.started is None:
            self.started = now
        left = self.started + self.budget - now
        if left <= 0:
            return False
        self.attempts += 1
        pause = min(2.0 ** (self.attempts - 1), 30.0, left)
        on_event(E.Reconnecting(self.attempts, str(err), pause, left))
        log.warning("session lost (%s); reconnecting (attempt %d) in %.0f s", err, self.attempts, pause)
        if self.cancel is not None:
            if self.cancel.wait(pause):
                raise CaptureCancelled("capture cancelled by the operator while reconnecting",
                                       aborted_on_server=False)
        else:
            time.sleep(pause)
        return True


def _abort(conn: Connection, replies: _Replies, err: BaseException) -> None:
    """Tell the receiver to discard the partial capture (best effort)."""
    if isinstance(err, ServerError) and replies.error:
        return  # the receiver failed first and has cleaned up already
    reason = str(err) or type(err).__name__
    try:
        P.StreamWriter(conn.send).abort(reason)
        conn.close_write()
        replies.drain(timeout=10)  # let it remove the half-written images before we hang up
    except (ColdcloneError, OSError, ValueError):
        pass
