"""Screen 6: what happened, where the images are, what to fix before booting them, what next."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header

from .. import text
from ..widgets.plain import Plain


class DoneScreen(Screen):
    BINDINGS = [
        Binding("p", "next('poweroff')", "Power off"),
        Binding("b", "next('reboot')", "Reboot"),
        Binding("s", "next('shell')", "Shell"),
        Binding("a", "again", "Capture again"),
    ]

    def compose(self) -> ComposeResult:
        plan = self.app.plan
        yield Header(show_clock=False, icon="")
        ok = plan.result is not None
        if ok and plan.result.unreadable_sectors:
            # verified, but not a clean copy: never the plain success line
            verdict, cls = f"CAPTURE COMPLETE, {plan.result.verdict().upper()}", "error"
        else:
            verdict, cls = ("CAPTURE COMPLETE AND VERIFIED", "ok") if ok else ("CAPTURE NOT DONE", "error")
        yield Plain(verdict, id="done-verdict", classes=cls)
        with VerticalScroll(id="done-box"):
            yield Plain("\n".join(self.lines()), id="done-text")
        with Horizontal(id="done-buttons"):
            yield Button("Power off (p)", id="poweroff")
            yield Button("Reboot (b)", id="reboot")
            yield Button("Shell (s)", id="shell")
            if not ok:
                yield Button("Again (a)", id="again")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  6 Done"

    def lines(self) -> list[str]:
        plan = self.app.plan
        out = []
        if plan.result is not None:
            # the console's summary, word for word
            out += plan.result.summary_lines(plan.estimate)
        else:
            out.append(f"Error (exit {plan.exit_code}): {plan.error}")
            if plan.capture_id:
                out.append(f"Capture id: {plan.capture_id}")
            out.append("The source disks were not changed. Fix the cause and capture again (a).")
        ready = plan.readiness
        out.append("")
        if ready is not None and ready.os_name:
            out.append(f"Before booting the image in KVM/OpenStack ({ready.os_name}):")
            out.append(f"  firmware {ready.firmware.value}, boot loader {ready.boot_loader.value}"
                       + (f", root {ready.root.spec} ({ready.root.kind})" if ready.root else "")
                       + f", cloud-init {'yes' if ready.cloud_init else 'no'}")
            order = {"high": 0, "medium": 1, "low": 2}
            for f in sorted(ready.findings, key=lambda f: (order.get(f.severity, 3), f.id)):
                out.append("  " + text.finding_line(f))
                # what coldclone-convert does about it, else what a person has to do
                out.append(f"    conversion will {f.conversion}" if f.conversion else
                           f"    fix: {f.fix}")
            if not ready.findings:
                out.append("  no findings: the image should boot as is")
        else:
            out.append("Cloud readiness: no source OS was inspected.")
        out.append("")
        out.append("Next: power off (p) the server, reboot (b) it into its own OS, or open a shell (s).")
        return out

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "again":
            self.action_again()
        else:
            self.action_next(event.button.id)

    def action_next(self, what: str) -> None:
        if what == "shell":
            result = self.app.plan.result
            self.app.exit(result.exit_code if result is not None else self.app.plan.exit_code)
            return
        question = "Power the server off now?" if what == "poweroff" else "Reboot the server now?"
        self.app.confirm(question, yes="Power off" if what == "poweroff" else "Reboot",
                         then=lambda yes: self._power(what) if yes else None)

    def _power(self, what: str) -> None:
        try:
            self.app.services.power(what)
        except Exception as e:
            self.notify(f"{what} failed: {e}", markup=False, severity="error")
            return
        result = self.app.plan.result
        self.app.exit(result.exit_code if result is not None else 0)

    def action_again(self) -> None:
        plan = self.app.plan
        plan.result, plan.error, plan.exit_code, plan.capture_id = None, None, 0, None
        self.app.start_again()
