"""One capture, start to end: guard the sources, stream every disk, get the receiver's verdict.

Front ends (headless CLI, TUI) call run_capture() and get typed events
through `on_event`; they never see the protocol or the transport.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import __version__
from .. import protocol as P
from ..errors import CancelledError, ColdcloneError, ConnectionError_, ServerError, UsageError
from ..transport.base import Connection
from . import events as E
from . import inuse
from .guard import ReadOnlyGuard, device_tree
from .source import SourceDisk, probe
from .stream import DiskStats, StreamOptions, stream_disk

log = logging.getLogger("coldclone.capture")

# How long to wait for the receiver's verdict after the last byte: it still
# has to read back, convert and compare every disk.
FINAL_REPLY_TIMEOUT = 6 * 3600


@dataclass
class CaptureResult:
    capture_id: str
    target: str
    location: str
    disks: list[dict]
    elapsed: float
    bytes_read: int
    wire_bytes: int
    zero_bytes: int
    total_size: int
    manifest: dict = field(default_factory=dict)
    # where the receiver's queued conversion will write the KVM images (empty: no conversion)
    converted_images: tuple[str, ...] = ()

    def conversion_lines(self) -> list[str]:
        """Where the converted images will be, for the headless summary and the TUI's Done
        screen alike; nothing when the receiver converts nothing."""
        if not self.converted_images:
            return []
        return (["conversion queued on the conversion server (coldclone-convert); the KVM image"
                 + ("s" if len(self.converted_images) > 1 else "") + " will be:"]
                + [f"  {p}" for p in self.converted_images]
                + ["  (its result, every fix applied: the `conversion` section of manifest.json there)"])


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
        return reply

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
            if msg.event in events:
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


def run_capture(
    disk_paths: list[str],
    connect: Callable[[], Connection],
    opts: StreamOptions,
    *,
    capture_id: str | None = None,
    image_format: str = "qcow2",
    on_event: Callable[[object], None] = lambda e: None,
    cancel: threading.Event | None = None,
    source_facts: dict | None = None,
    estimate: dict | None = None,
    data_estimates: dict[str, int] | None = None,
    allow_mounted: bool = False,
    readiness=None,
) -> CaptureResult:
    """Capture disk_paths. data_estimates: the estimate's non-zero bytes per source path, sent in
    each DISK header so the receiver can refuse up front when its disk cannot hold them.
    readiness: the ReadinessReport inspection made before the capture (manifest `readiness`)."""
    opts.validate()
    if not disk_paths:
        raise UsageError("no source disk given: name at least one with --disk /dev/X")
    sources: list[SourceDisk] = [probe(p) for p in disk_paths]
    names = [s.name for s in sources]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise UsageError(f"disk {', '.join(sorted(dups))} named twice")
    capture_id = capture_id or new_capture_id()
    total = sum(s.size for s in sources)
    t0 = time.monotonic()
    if cancel is not None and cancel.is_set():   # stopped before anything started
        raise CaptureCancelled("capture cancelled before it started", aborted_on_server=False)
    what = "capture " + ", ".join(disk_paths)
    tree = device_tree([s.path for s in sources])
    # Before the guard: setting a device read-only under a read-write mount would make the
    # running filesystem fail its own writes.
    in_use = inuse.check(tree, what=what, allow=allow_mounted)
    source_facts = dict(source_facts or {})
    if allow_mounted:
        # The manifest says the operator chose to capture a source that may be changing.
        source_facts["allow_mounted_source"] = {"in_use": [f.describe() for f in in_use]}

    with ReadOnlyGuard([s.path for s in sources]) as guard:
        log.info("read-only guard on: %s", ", ".join(guard.guarded))
        # Again with the guard on, closing the window between the check and BLKROSET (no
        # read-write mount or write-open can start now).
        late = [f for f in inuse.scan(tree) if f not in in_use]
        if late:
            inuse.check_found(late, what=what, allow=allow_mounted)
            source_facts["allow_mounted_source"]["in_use"] += [f.describe() for f in late]
        conn = connect()
        replies = _Replies(conn)
        sent = {"wire": 0}

        def send(data: bytes) -> None:
            replies.poll()
            try:
                conn.send(data)
            except (BrokenPipeError, OSError, ValueError) as e:
                raise replies.after_send_failure(e) from None
            sent["wire"] += len(data)

        writer = P.StreamWriter(send)
        if estimate is not None:
            try:
                P.dumps(estimate)
            except (TypeError, ValueError) as e:
                # The estimate is advice for the manifest: one that is not strict JSON (NaN, an
                # infinite rate) must not stop the capture.
                log.warning("estimate left out of the manifest: %s", e)
                estimate = None
        try:
            # The estimate goes to the manifest, next to the actual time.
            writer.hello(P.Hello(capture_id=capture_id, agent_version=__version__, format=image_format,
                                 source={"hostname": socket.gethostname(), **(source_facts or {})},
                                 disks=tuple(names), estimate=estimate,
                                 readiness=readiness.to_dict() if readiness is not None else None))
            ready = replies.wait_for((P.Event.READY,), timeout=60, cancel=cancel)
            location = ready.path or ""
            on_event(E.CaptureStarted(capture_id, conn.description, sources, total))
            done_before = 0
            totals = DiskStats()
            for src in sources:
                on_event(E.DiskStarted(src.name, src.path, src.size))
                writer.disk(P.DiskHeader(
                    name=src.name, size=src.size, block_size=opts.block_size,
                    logical_sector_size=src.logical_sector_size,
                    physical_sector_size=src.physical_sector_size,
                    mode=opts.mode, codec=opts.codec_label(), source=src.facts(),
                    data_bytes_estimate=(data_estimates or {}).get(src.path)))

                def on_chunk(pos: int, st: DiskStats, src=src, base=done_before) -> None:
                    on_event(E.Progress(
                        disk=src.name, disk_done=pos, disk_size=src.size, total_done=base + pos,
                        total_size=total, bytes_read=totals.bytes_read + st.bytes_read,
                        wire_bytes=sent["wire"], zero_bytes=totals.zero_bytes + st.zero_bytes,
                        elapsed=time.monotonic() - t0))

                digest, st = stream_disk(src, send, opts, on_chunk=on_chunk, cancel=cancel)
                writer.end(P.DiskEnd(digest, **st.as_dict()))
                for k in ("bytes_read", "data_bytes", "zero_bytes", "payload_bytes", "wire_bytes"):
                    setattr(totals, k, getattr(totals, k) + getattr(st, k))
                done_before += src.size
                on_event(E.DiskFinished(src.name, digest.hex(), st.as_dict()))
            writer.finish()
            conn.close_write()
            on_event(E.ServerNote("all data sent; the server is verifying and converting"))
            final = replies.wait_for((P.Event.COMPLETE,), timeout=FINAL_REPLY_TIMEOUT, cancel=cancel)
        except (CancelledError, ColdcloneError, KeyboardInterrupt) as e:
            _abort(conn, replies, e)
            if isinstance(e, (CancelledError, KeyboardInterrupt)):
                raise CaptureCancelled(str(e) or "capture cancelled by the operator",
                                       aborted_on_server=True) from None
            raise
        finally:
            conn.close()

    manifest = final.manifest
    result = CaptureResult(
        capture_id=capture_id,
        target=conn.description,
        location=final.path or location,
        disks=manifest.get("disks", []),
        elapsed=time.monotonic() - t0,
        bytes_read=totals.bytes_read,
        wire_bytes=sent["wire"],
        zero_bytes=totals.zero_bytes,
        total_size=total,
        manifest=manifest,
        converted_images=final.converted_images,
    )
    on_event(E.CaptureFinished(result))
    return result


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
