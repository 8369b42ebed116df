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

from .capture import events as E
from .discover.model import to_dict
from .discover.render import render
from .estimate.progress import ProgressPrinter, print_summary
from .job import Captured, Estimated, Inventoried, Note


def emit_json(tag: str, obj, out=None) -> None:
    """A JSON document between marker lines, pretty-printed so no line is long."""
    out = out or sys.stdout
    print(f"COLDCLONE-{tag}-JSON-BEGIN", file=out, flush=True)
    print(json.dumps(obj, indent=1, sort_keys=True, default=str), file=out, flush=True)
    print(f"COLDCLONE-{tag}-JSON-END", file=out, flush=True)


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
        elif isinstance(ev, Estimated):
            self.estimate = ev.estimate
            self.say("\n".join(ev.estimate.lines()))
            if self.machine_readable:
                emit_json("ESTIMATE", ev.estimate.to_dict(), self.out)
        elif isinstance(ev, Captured):
            self.close()
            summary = io.StringIO()
            print_summary(ev.result, out=summary, estimate=ev.estimate)
            self.say(summary.getvalue().rstrip("\n"))
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
