"""Screen 4: how long the server will be down, per disk and in total; the mode; confirm."""

from __future__ import annotations

import logging

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, RadioSet, Static

from ....choices import CAPTURE_MODES
from ....choices import MODE_HELP as MODES
from ....errors import ColdcloneError
from ....units import human_bytes
from ...estimate.plan import predict_cutover
from .. import text
from ..widgets.choice import Choice
from ..widgets.plain import Plain, cells

log = logging.getLogger("coldclone.tui")

MODE_ORDER = CAPTURE_MODES   # the radio buttons in the capture engine's order


class EstimateScreen(Screen):
    BINDINGS = [
        Binding("s", "start", "Start capture"),
        Binding("r", "resume", "Resume capture"),
        Binding("e", "estimate", "Estimate again"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        plan = self.app.plan
        yield Header(show_clock=False, icon="")
        yield Plain("", id="est-what")
        with RadioSet(id="mode"):
            for m in MODE_ORDER:
                yield Choice(f"{m}: {MODES[m]}", value=(m == plan.mode), id=f"mode-{m}")
        table = DataTable(id="est-disks", cursor_type="none")
        table.add_columns("Disk", "Size", "Read", "Send", "Time", "Bottleneck")
        yield table
        yield Plain("", id="est-total", classes="heading")
        with Horizontal(id="est-buttons"):
            yield Button("Back (Esc)", id="back")
            yield Button("Start capture (s)", id="start", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  4 Estimate"
        plan = self.app.plan
        self.query_one("#est-what", Static).update(
            text.selection_summary(plan.disks()) + f"\nTo: {plan.target.describe()}")
        if plan.estimate is not None:
            self.show(plan.estimate)
        else:
            self.action_estimate()
        plan.unfinished = []
        self.run_lookup()
        self.query_one("#mode", RadioSet).focus()

    def check_action(self, action: str, parameters) -> bool:
        # "Resume" exists only when the server holds an unfinished capture of these disks.
        return action != "resume" or bool(self.app.plan.unfinished)

    @work(thread=True, exclusive=True, group="lookup")
    def run_lookup(self) -> None:
        """Ask the server for unfinished captures of the selected disks (a source server that
        was rebooted mid-capture); nothing is shown when it holds none or cannot be asked."""
        svc, plan = self.app.services, self.app.plan
        if svc.find_unfinished is None or plan.target is None:
            return
        try:
            found = svc.find_unfinished(plan.target, plan.disk_paths())
        except ColdcloneError as e:
            log.info("no lookup of unfinished captures: %s", e)
            return
        except Exception:  # the offer is a convenience: a bug in it must not stop a capture
            log.exception("lookup of unfinished captures failed")
            return
        if found:
            self.app.call_from_thread(self._found, found)

    def _found(self, found) -> None:
        self.app.plan.unfinished = found
        self.mount(Plain(text.unfinished_offer(found), id="est-resume"), before="#est-buttons")
        self.query_one("#est-buttons").mount(Button("Resume (r)", id="resume"), before="#start")
        self.refresh_bindings()
        if self.app.plan.estimate is not None:
            self.show(self.app.plan.estimate)

    def _with_cutover(self, est):
        """The estimate with the predicted cutover of the warm capture on offer (the lookup and the
        estimate run apart: whichever comes last puts them together)."""
        found = self.app.plan.unfinished
        if est.cutover is None and found and found[0].warm is not None:
            try:
                est.cutover = predict_cutover(est, found[0])
            except Exception:  # advice: the cold estimate stands without it
                log.exception("cutover prediction failed")
        return est

    @on(RadioSet.Changed, "#mode")
    def _mode(self, event: RadioSet.Changed) -> None:
        mode = MODE_ORDER[event.radio_set.pressed_index]
        if mode != self.app.plan.mode:
            self.app.plan.mode = mode
            self.app.plan.estimate = None
            self.action_estimate()

    def action_estimate(self) -> None:
        svc = self.app.services
        if svc.estimate is None:
            self.query_one("#est-total", Static).update(
                f"Estimate: {svc.why_missing('estimate')}. You can still start the capture.")
            return
        self.query_one("#est-total", Static).update(
            f"Estimating (about {svc.config.calibrate:.0f} s of calibration against the target) ...")
        self.run_estimate()

    @work(thread=True, exclusive=True, group="estimate")
    def run_estimate(self) -> None:
        svc, plan = self.app.services, self.app.plan
        choice = plan.target
        target = None
        try:
            target = svc.open_target(choice.url, identity=choice.identity, hostkey=choice.hostkey,
                                     known_hosts=choice.known_hosts)
            est = svc.estimate(plan.inventory, plan.disk_paths(), choice.url, plan.mode,
                               calibrate_seconds=svc.config.calibrate, connect=target.connect,
                               local_path=target.local_path)
        except ColdcloneError as e:
            self.app.call_from_thread(self._failed, f"Estimate failed: {e}")
            return
        except Exception as e:
            self.app.call_from_thread(self._failed, f"Estimate failed (internal error): {e!r}")
            return
        finally:
            if target is not None:
                target.close()
        self.app.call_from_thread(self._estimated, est)

    def _failed(self, line: str) -> None:
        self.query_one("#est-total", Static).update(line + " You can still start the capture.")

    def _estimated(self, est) -> None:
        self.app.plan.estimate = est
        self.show(est)

    def show(self, est) -> None:
        est = self._with_cutover(est)
        table = self.query_one("#est-disks", DataTable)
        table.clear()
        for row in text.estimate_rows(est):
            table.add_row(*cells(*row))
        self.query_one("#est-total", Static).update("\n".join(text.estimate_total(est)))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"back": self.action_back, "resume": self.action_resume}.get(event.button.id, self.action_start)()

    def action_start(self) -> None:
        plan = self.app.plan
        total = sum(d.size for d in plan.disks())
        details = [f"  {d.dev_path or d.name}  {human_bytes(d.size)}  {d.model or ''}".rstrip()
                   for d in plan.disks()]
        details += [f"to   {plan.target.describe()}", f"mode {plan.mode}"]
        if plan.estimate is not None:
            details += text.estimate_total(plan.estimate)[:1]
        if plan.unfinished:
            details.append(f"A new capture: {plan.unfinished[0].capture_id} stays unfinished on the server.")
        details.append("The source disks are set read-only; nothing is written to them.")
        self.app.confirm(f"Capture {len(plan.disks())} disk(s), {human_bytes(total)}?", details,
                         yes="Start capture", then=self._confirmed)

    def _confirmed(self, yes: bool | None) -> None:
        if yes:
            self.app.plan.capture_id = None   # a new capture, even when one could be resumed
            self.app.start_capture()

    def action_resume(self) -> None:
        plan = self.app.plan
        if not plan.unfinished:
            return
        u = plan.unfinished[0]
        self.app.confirm(f"Resume capture {u.capture_id}?", text.resume_details(u),
                         yes="Resume capture", then=self._resume_confirmed)

    def _resume_confirmed(self, yes: bool | None) -> None:
        if yes and self.app.plan.unfinished:
            self.app.plan.capture_id = self.app.plan.unfinished[0].capture_id
            self.app.start_capture()

    def action_back(self) -> None:
        self.app.pop_screen()
