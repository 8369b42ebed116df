"""Screen 5: the capture running. Per-disk bars, throughput sparkline, ETA, bytes skipped,
a log; cancel asks first, then the capture stops at a record boundary and the receiver
discards the partial images (run_capture sends ABORT).

The capture runs in a thread worker; it posts CaptureEvent / CaptureEnded messages and
checks the cancel flag, so the screen never waits on a disk or the network.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, RichLog, Static

from ...capture import events as E
from ...capture.session import new_capture_id
from ....choices import IscsiMode
from ....errors import EXIT_CANCELLED, EXIT_INTERNAL, CancelledError, ColdcloneError
from ...estimate.progress import EtaEstimator, Motion
from ...estimate.rate import RateMeter
from ...job import Inspected, Note, Prepared
from ....units import human_bytes, human_seconds
from ..messages import CaptureEnded, CaptureEvent
from ..widgets.bars import DiskBar, Spark
from ..widgets.plain import Plain
from .confirm import Confirm

# Progress events arrive per chunk (hundreds a second on fast disks); the screen
# needs a few a second, and a 9600-baud serial console far fewer.
PROGRESS_EVERY = 0.25


class ProgressScreen(Screen):
    BINDINGS = [Binding("escape,c", "cancel", "Cancel capture")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.read_rate = RateMeter(half_life=5.0)
        self.wire_rate = RateMeter(half_life=5.0)
        # the same model-based ETA as the console lines (estimate.progress.EtaEstimator),
        # made when the screen mounts and the plan's estimate is known
        self.eta: EtaEstimator | None = None
        self.eta_left: float | None = None
        self.bars: dict[str, DiskBar] = {}
        self.finished = False
        self.last_progress: E.Progress | None = None
        # "STALLED for N s" by the console's rule while bytes should flow (not while the server
        # verifies), and what a reconnect is doing instead of a stale rate
        self.motion = Motion(time.monotonic())
        self.sending = False
        self.reconnecting: E.Reconnecting | None = None

    def compose(self) -> ComposeResult:
        plan = self.app.plan
        ascii_only = self.app.ascii_only
        yield Header(show_clock=False, icon="")
        yield Plain(f"To {plan.target.describe()}, mode {plan.mode}", id="prog-what")
        with Vertical(id="bars"):
            for d in plan.disks():
                b = DiskBar(d.name, d.size, ascii_only)
                # Keyed by the disk id, the name the capture's events carry (cciss-c0d0).
                self.bars[d.id] = b
                yield b
        yield Plain("", id="prog-stats", classes="heading")
        yield Plain("Throughput (read, MB/s):", id="spark-label")
        yield Spark(ascii_only, id="spark")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  5 Capture"
        self.eta = EtaEstimator(self.app.plan.estimate)
        self.stats()
        # The figures change without events too: a stall is the absence of them.
        self.set_interval(1.0, self._tick)
        if self.app.start_capture_worker:
            self.run_capture()

    # ------------------------------------------------------------ the worker
    @work(thread=True, exclusive=True, group="capture", exit_on_error=False)
    def run_capture(self) -> None:
        svc, plan = self.app.services, self.app.plan
        choice = plan.target
        last = [0.0]

        def on_event(ev) -> None:
            if isinstance(ev, E.Progress):
                now = time.monotonic()
                if now - last[0] < PROGRESS_EVERY and ev.disk_done < ev.disk_size:
                    return
                last[0] = now
            self.post_message(CaptureEvent(ev))

        target = None
        try:
            target = svc.open_target(choice.url, identity=choice.identity, hostkey=choice.hostkey,
                                     known_hosts=choice.known_hosts)
            # The screens did the network, iSCSI, discovery and estimate steps; the capture job
            # does the rest with the operator's choices on top of the kernel command line's
            # (compress=, format= ...). Hooks are for unattended runs.
            cfg = dataclasses.replace(
                svc.config, server=[choice.url], identity=choice.identity, hostkey=list(choice.hostkey),
                known_hosts=choice.known_hosts, mode=plan.mode, disks=plan.disk_paths(),
                # Always a fixed id: the operator chose on the Estimate screen between resuming an
                # unfinished capture and a new one, so the job must not pick one on its own.
                capture_id=plan.capture_id or (svc.capture_id() if svc.capture_id else new_capture_id()),
                iscsi=IscsiMode.OFF, ip=None, pre=None, post=None, fail=None, estimate_only=False)
            # The Inventory screen's inspection when it finished; else the job inspects (every
            # capture carries its readiness report) and says so with an Inspected event.
            prepared = Prepared(target=target, discovered=True, inventory=plan.inventory,
                                sources=plan.disk_paths(), estimated=True, estimate=plan.estimate,
                                iscsi_done=True, inspected=plan.readiness is not None,
                                readiness=plan.readiness)
            result = svc.run_capture(cfg, prepared=prepared, notify=on_event, cancel=self.cancel)
        except CancelledError as e:
            self.post_message(CaptureEnded(error=str(e) or "cancelled by the operator",
                                           exit_code=EXIT_CANCELLED, cancelled=True))
            return
        except ColdcloneError as e:
            cancelled = self.cancel.is_set()
            self.post_message(CaptureEnded(error=str(e), exit_code=EXIT_CANCELLED if cancelled else e.exit_code,
                                           cancelled=cancelled))
            return
        except Exception as e:  # a bug: the operator still gets a screen, not a traceback
            self.post_message(CaptureEnded(error=f"internal error: {e!r}", exit_code=EXIT_INTERNAL))
            return
        finally:
            if target is not None:
                target.close()
        self.post_message(CaptureEnded(result=result))

    # ------------------------------------------------------------ messages
    def on_capture_event(self, message: CaptureEvent) -> None:
        self.apply(message.event)

    def apply(self, ev) -> None:
        """Show one core event (also called directly by tests with recorded events)."""
        log = self.query_one("#log", RichLog)
        if isinstance(ev, Note):
            log.write(ev.text)
        elif isinstance(ev, Inspected):
            self.app.plan.readiness = ev.report     # the Done screen's
            for line in ev.report.summary()[:1]:
                log.write(line)
        elif isinstance(ev, E.CaptureStarted):
            self.app.plan.capture_id = ev.capture_id
            log.write(f"capture {ev.capture_id} -> {ev.target}: {len(ev.disks)} disk(s), "
                      f"{human_bytes(ev.total_bytes)}")
        elif isinstance(ev, E.DiskStarted):
            bar = self.bars.get(ev.name)
            if bar is not None:
                bar.state = "reading"
            log.write(f"{ev.name} ({ev.path}, {human_bytes(ev.size)}) started")
            self.sending = True
            self.motion.restart(time.monotonic())
        elif isinstance(ev, E.Progress):
            self.sending, self.reconnecting = True, None
            self.motion.update(time.monotonic(), ev.total_done, ev.wire_bytes)
            bar = self.bars.get(ev.disk)
            if bar is not None:
                bar.done = ev.disk_done
            r = self.read_rate.update(ev.elapsed, ev.bytes_read)
            self.wire_rate.update(ev.elapsed, ev.wire_bytes)
            if self.eta is None:
                self.eta = EtaEstimator(self.app.plan.estimate)
            self.eta_left = self.eta.update(ev.elapsed, ev.disk, ev.disk_done, ev.disk_size, ev.total_done,
                                            ev.total_size, ev.wire_bytes)
            if r is not None:
                self.query_one("#spark", Spark).push(r / 1e6)
            self.last_progress = ev
            self.stats()
        elif isinstance(ev, E.DiskFinished):
            bar = self.bars.get(ev.name)
            if bar is not None:
                bar.done = bar.disk_size
                bar.state = "sent"
            log.write(f"{ev.name} sent, digest {ev.digest[:16]}...")
            self.sending = False
        elif isinstance(ev, E.ServerNote):
            self.sending = False
            for bar in self.bars.values():
                bar.state = "verifying"
            log.write(ev.text)
        elif isinstance(ev, E.DiskResumed):
            log.write(ev.text())
        elif isinstance(ev, E.Reconnecting):
            log.write(f"reconnecting (attempt {ev.attempt}) in {ev.wait:.0f} s: {ev.reason}")
            self.reconnecting = ev
            self.stats()

    def _tick(self) -> None:
        if not self.finished and self.last_progress is not None:
            self.stats()

    def stats(self) -> None:
        ev = self.last_progress
        if ev is None:
            self.query_one("#prog-stats", Static).update("Starting: write-protecting the source disks, "
                                                          "connecting ...")
            return
        rate = self.read_rate.rate
        wire = self.wire_rate.rate
        eta = self.eta_left
        mbs = lambda x: "--" if x is None else f"{x / 1e6:.1f}"
        pct = 100.0 * ev.total_done / max(ev.total_size, 1)
        stalled = self.motion.stalled_for(time.monotonic()) if self.sending else 0.0
        if self.reconnecting is not None:
            r = self.reconnecting
            flow = f"RECONNECTING (attempt {r.attempt}, {r.left:.0f} s left): {r.reason}"
        elif stalled:
            flow = (f"STALLED for {stalled:.0f} s: nothing read or sent (the source disk, the link "
                    f"or the server is stuck)")
        else:
            flow = f"read {mbs(rate)} MB/s  wire {mbs(wire)} MB/s  skipped (zeros) {human_bytes(ev.zero_bytes)}"
        self.query_one("#prog-stats", Static).update(
            f"Total {pct:5.1f}%  {human_bytes(ev.total_done)} of {human_bytes(ev.total_size)}  "
            f"elapsed {human_seconds(ev.elapsed)}  ETA {human_seconds(eta)}\n" + flow
            + (f"  UNREADABLE {ev.unreadable_sectors} sectors (zero-filled)" if ev.unreadable_sectors else ""))

    def on_capture_ended(self, message: CaptureEnded) -> None:
        self.finished = True
        plan = self.app.plan
        plan.result, plan.error, plan.exit_code = message.result, message.error, message.exit_code
        if message.cancelled:
            plan.error = ("cancelled by the operator; the conversion server was told to discard "
                          "the partial capture" + (f" ({message.error})" if message.error else ""))
        self.app.show_done(self)

    # ------------------------------------------------------------ actions
    def action_cancel(self) -> None:
        if self.finished or self.cancel.is_set():
            return
        self.app.push_screen(Confirm(
            "Cancel the capture?",
            ["The capture stops after the current chunk; the conversion server",
             "discards the partial images. You can capture again afterwards."],
            yes="Cancel capture", no="Keep going"), self._cancel_answer)

    def _cancel_answer(self, yes: bool | None) -> None:
        if yes and not self.finished:
            self.cancel.set()
            self.query_one("#log", RichLog).write("cancelling: stopping at the next record boundary ...")
