"""The line-based rendering of a capture job's events, shared by `coldclone capture` and
`coldclone headless` (the TUI renders the same events on its screens).

Headless prefixes every line with `coldclone: ` (the live system fans them out to every
console and the log) and adds the machine-readable JSON blocks fleets and tests parse
(docs/cli.md); the CLI prints the estimate, progress and summary plainly.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
from typing import Callable

from .capture import events as E
from .discover.model import to_dict
from .discover.render import render
from .capture.session import CaptureResult
from .estimate.plan import CaptureEstimate
from .estimate.progress import CaptureProgress, ProgressFigures, reconnecting_text, stalled_text
from .job import Captured, Estimated, Inspected, Inventoried, Note
from .. import records
from ..units import human_bytes as hb
from ..units import human_rate
from ..units import human_seconds as hs


def emit_json(tag: str, obj, out=None) -> None:
    """A JSON document between marker lines, pretty-printed so no line is long."""
    out = out or sys.stdout
    print(f"COLDCLONE-{tag}-JSON-BEGIN", file=out, flush=True)
    print(json.dumps(obj, indent=1, sort_keys=True, default=str), file=out, flush=True)
    print(f"COLDCLONE-{tag}-JSON-END", file=out, flush=True)


class ProgressPrinter:
    """Headless progress: a line every `interval` seconds, whatever the capture is doing.

    Call it with every event (it is run_capture's on_event); use `with printer.ticking():`
    around the capture so the cadence holds while the server verifies and converts. The
    figures are the one progress model's (estimate.progress.CaptureProgress), as on the TUI.
    """

    def __init__(self, interval: float = 5.0, out=sys.stdout, estimate: CaptureEstimate | None = None,
                 prefix: str = "", clock: Callable[[], float] | None = None):
        self.interval = interval
        self.out = out
        self.prefix = prefix
        self.estimate = estimate
        self.clock = clock or time.monotonic
        self.model = CaptureProgress(estimate, clock=self.clock)
        self.last = 0.0
        self._lock = threading.Lock()

    def __call__(self, ev) -> None:
        with self._lock:
            self.model.update(ev)
            if isinstance(ev, E.CaptureStarted):
                self._p(f"capture {ev.capture_id} -> {ev.target}: {len(ev.disks)} disk(s), {hb(ev.total_bytes)}")
                for d in ev.disks:
                    self._p(f"  {d.path}: {hb(d.size)} {d.model}".rstrip())
                if self.estimate is not None:
                    self._p(f"  estimate: ~{hs(self.estimate.total_seconds)}, {self.estimate.bottleneck}")
            elif isinstance(ev, E.DiskStarted):
                self._p(f"disk {ev.name} ({ev.path}, {hb(ev.size)}) started")
            elif isinstance(ev, E.Progress):
                now = self.clock()
                if now - self.last >= self.interval:
                    self._line(now)
            elif isinstance(ev, E.DiskFinished):
                self._p(f"disk {ev.name} sent: digest {ev.digest[:16]}...")
            elif isinstance(ev, E.ServerNote):
                self._p(ev.text)
            elif isinstance(ev, E.DiskResumed):
                self._p(ev.text())
            elif isinstance(ev, E.Reconnecting):
                self._p(f"reconnecting (attempt {ev.attempt}) in {ev.wait:.0f} s, {ev.left:.0f} s left: {ev.reason}")

    def figures(self, now: float | None = None) -> ProgressFigures:
        return self.model.figures(now)

    def _line(self, now: float) -> None:
        self.last = now
        self._p(progress_line(self.model.figures(now)))

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            if now - self.last >= self.interval and self.model.figures(now).phase != "starting":
                self._line(now)

    @contextlib.contextmanager
    def ticking(self):
        """A steady cadence: a line every interval even when no event comes (server phase)."""
        stop = threading.Event()

        def run():
            while not stop.wait(min(1.0, self.interval)):
                self.tick()

        t = threading.Thread(target=run, name="cc-progress", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(2)

    def _p(self, line: str) -> None:
        print(self.prefix + line, file=self.out, flush=True)


def progress_line(f: ProgressFigures) -> str:
    """One console line of the figures."""
    tail = f" [{f.bottleneck}]" if f.bottleneck else ""
    if not f.moved:
        return f"{f.phase}: {hs(f.elapsed)} elapsed"
    if f.phase == "server":
        return f"server verifying and converting: {hs(f.elapsed)} elapsed, ETA {hs(f.eta)}{tail}"
    if f.reconnecting is not None:
        flow = reconnecting_text(f.reconnecting)
    elif f.stalled_for:
        flow = stalled_text(f.stalled_for)
    else:
        flow = f"read {human_rate(f.read_rate)} MB/s wire {human_rate(f.wire_rate)} MB/s"
    bad = f" | UNREADABLE {f.unreadable_sectors} sectors" if f.unreadable_sectors else ""
    return (f"{f.disk}: {f.disk_percent:5.1f}% | total {f.total_percent:5.1f}% {hb(f.total_done)}/{hb(f.total_size)} | "
            f"{flow} | skipped {hb(f.zero_bytes)}{bad} | elapsed {hs(f.elapsed)} ETA {hs(f.eta)}{tail}")


def print_summary(result: CaptureResult, out=sys.stdout, estimate: CaptureEstimate | None = None) -> None:
    for line in result.summary_lines(estimate):
        print(line, file=out)


class JobConsole:
    """Call it with each event of a CaptureJob; close() when the job ends."""

    def __init__(self, progress_interval: float, *, prefix: str = "", machine_readable: bool = False,
                 out=None, notes=None):
        self.interval = progress_interval
        self.prefix = prefix
        self.machine_readable = machine_readable    # inventory + JSON blocks (headless)
        self.out = out or sys.stdout
        self.notes = notes or self.out
        self.estimate = None
        self.printer: ProgressPrinter | None = None
        self._ticking = contextlib.ExitStack()

    def say(self, text: str = "", out=None) -> None:
        for line in str(text).splitlines() or [""]:
            print(f"{self.prefix}{line}", file=out or self.out, flush=True)

    def __call__(self, ev) -> None:
        if isinstance(ev, Note):
            self.say(ev.text, self.notes)
        elif isinstance(ev, Inventoried):
            if not self.machine_readable:
                return
            if ev.inventory is not None:
                self.say(render(ev.inventory))
                emit_json("INVENTORY", to_dict(ev.inventory), self.out)
            if ev.sources:
                self.say("will capture: " + ", ".join(ev.sources))
        elif isinstance(ev, Inspected):
            self.say("\n".join(ev.report.summary()))
        elif isinstance(ev, Estimated):
            self.estimate = ev.estimate
            self.say("\n".join(ev.estimate.lines()))
            if self.machine_readable:
                emit_json("ESTIMATE", records.encode(ev.estimate), self.out)
        elif isinstance(ev, Captured):
            self.close()
            summary = io.StringIO()
            print_summary(ev.result, out=summary, estimate=ev.estimate)
            self.say(summary.getvalue().rstrip("\n"))
            # the last word: what the cloud image will need (the manifest has it all), and
            # the Glance image when the conversion server published it already
            if ev.readiness is not None:
                self.say("\n".join(ev.readiness.summary()))
        else:   # the capture's own progress events
            if isinstance(ev, E.CaptureStarted):
                self.printer = ProgressPrinter(self.interval, out=self.out, estimate=self.estimate,
                                               prefix=self.prefix)
                # lines keep coming while the server verifies and converts
                self._ticking.enter_context(self.printer.ticking())
            if self.printer is not None:
                self.printer(ev)

    def close(self) -> None:
        self._ticking.close()
