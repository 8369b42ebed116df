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
from typing import Callable

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
from ...estimate.progress import CaptureProgress, ProgressFigures, reconnecting_text, stalled_text
from ...job import Inspected, Note, Prepared
from ....units import human_bytes, human_rate, human_seconds
from ..messages import CaptureEnded, CaptureEvent
from ..widgets.bars import DiskBar, Spark
from ..widgets.plain import Plain

# Progress events arrive per chunk (hundreds a second on fast disks); the screen
# needs a few a second, and a 9600-baud serial console far fewer.
PROGRESS_EVERY = 0.25


class ProgressScreen(Screen):
    BINDINGS = [Binding("escape,c", "cancel", "Cancel capture")]

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.cancel = threading.Event()
        # The one progress model (estimate.progress.CaptureProgress), as the console lines:
        # the worker thread feeds it every event, the screen draws its figures.
        self.clock = clock or time.monotonic
        self.progress: CaptureProgress | None = None
        self.bars: dict[str, DiskBar] = {}
        self.finished = False

    def compose(self) -> ComposeResult:
        plan = self.app.plan
        ascii_only = self.app.ascii_only
        self.progress = CaptureProgress(plan.estimate, clock=self.clock)
        # Keyed by the disk id, the name the capture's events carry (cciss-c0d0).
        self.progress.expect([(d.id, d.size) for d in plan.disks()])
        yield Header(show_clock=False, icon="")
        yield Plain(f"To {plan.target.describe()}, mode {plan.mode}", id="prog-what")
        with Vertical(id="bars"):
            for d in plan.disks():
                b = DiskBar(d.name, d.size, ascii_only)
                self.bars[d.id] = b
                yield b
        yield Plain("", id="prog-stats", classes="heading")
        yield Plain("Throughput (read, MB/s):", id="spark-label")
        yield Spark(ascii_only, id="spark")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  5 Capture"
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
            self.progress.update(ev)     # every event: the figures are the console's
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
        self.show(message.event)     # the worker fed the model already

    def apply(self, ev) -> None:
        """Feed one core event to the model and show it (tests replay recorded events so)."""
        self.progress.update(ev)
        self.show(ev)

    def show(self, ev) -> None:
        """What an event adds to the log and the plan; the figures are redrawn from the model."""
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
            log.write(f"{ev.name} ({ev.path}, {human_bytes(ev.size)}) started")
        elif isinstance(ev, E.DiskFinished):
            log.write(f"{ev.name} sent, digest {ev.digest[:16]}...")
        elif isinstance(ev, E.ServerNote):
            log.write(ev.text)
        elif isinstance(ev, E.DiskResumed):
            log.write(ev.text())
        elif isinstance(ev, E.Reconnecting):
            log.write(f"reconnecting (attempt {ev.attempt}) in {ev.wait:.0f} s: {ev.reason}")
        f = self.stats()
        if isinstance(ev, E.Progress) and f.read_rate is not None:
            self.query_one("#spark", Spark).push(f.read_rate / 1e6)

    def _tick(self) -> None:
        if not self.finished:
            self.stats()

    def stats(self) -> ProgressFigures:
        """Draw the model's figures: the bars and the two lines of totals and flow."""
        f = self.progress.figures()
        for d in f.disks:
            bar = self.bars.get(d.name)
            if bar is not None:
                bar.done, bar.state = d.done, d.state
        if not f.moved:
            self.query_one("#prog-stats", Static).update("Starting: write-protecting the source disks, "
                                                          "connecting ...")
            return f
        if f.reconnecting is not None:
            flow = reconnecting_text(f.reconnecting)
        elif f.stalled_for:
            flow = stalled_text(f.stalled_for)
        else:
            flow = (f"read {human_rate(f.read_rate)} MB/s  wire {human_rate(f.wire_rate)} MB/s  "
                    f"skipped (zeros) {human_bytes(f.zero_bytes)}")
        self.query_one("#prog-stats", Static).update(
            f"Total {f.total_percent:5.1f}%  {human_bytes(f.total_done)} of {human_bytes(f.total_size)}  "
            f"elapsed {human_seconds(f.elapsed)}  ETA {human_seconds(f.eta)}\n" + flow
            + (f"  UNREADABLE {f.unreadable_sectors} sectors (zero-filled)" if f.unreadable_sectors else ""))
        return f

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
        self.app.confirm(
            "Cancel the capture?",
            ["The capture stops after the current chunk; the conversion server",
             "discards the partial images. You can capture again afterwards."],
            yes="Cancel capture", no="Keep going", then=self._cancel_answer)

    def _cancel_answer(self, yes: bool | None) -> None:
        if yes and not self.finished:
            self.cancel.set()
            self.query_one("#log", RichLog).write("cancelling: stopping at the next record boundary ...")
