"""Screen 1: every disk, what it is, and which ones will be captured."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from ....errors import ColdcloneError
from .. import text
from ..services import Readiness
from ..widgets.plain import Plain, cells


class InventoryScreen(Screen):
    BINDINGS = [
        Binding("space,x", "toggle", "Select/unselect"),
        Binding("enter", "next", "Next: target", priority=True),
        Binding("i", "iscsi", "iSCSI"),
        Binding("n", "network", "Network"),
        Binding("r", "rescan", "Rescan"),
        Binding("q", "quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="")
        yield Plain("Discovering disks ...", id="inv-status", classes="status")
        table = DataTable(id="disks", cursor_type="row", zebra_stripes=False)
        table.add_columns("Cap", "Disk", "Size", "Model", "Controller", "What", "Holds")
        yield table
        yield Plain("", id="selection", classes="heading")
        with VerticalScroll(id="details-box"):
            yield Plain("", id="details")
        with VerticalScroll(id="warnings-box"):
            yield Plain("", id="warnings")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  1 Inventory"
        if self.app.plan.inventory is None:
            self.discover()
        else:
            self.show()

    def on_screen_resume(self) -> None:
        if self.app.rescan_needed:
            # New iSCSI LUNs after a login; the operator's selection of the old disks is redone.
            self.app.rescan_needed = False
            self.action_rescan()
        elif self.app.plan.inventory is not None:
            self.show()

    # ------------------------------------------------------------ workers
    @work(thread=True, exclusive=True, group="discover")
    def discover(self) -> None:
        svc = self.app.services
        try:
            inv = svc.discover()
        except ColdcloneError as e:
            self.app.call_from_thread(self._status, f"Discovery failed: {e}")
            return
        except Exception as e:  # a bug: say so, keep the console usable
            self.app.call_from_thread(self._status, f"Discovery failed (internal error): {e!r}")
            return
        self.app.call_from_thread(self._discovered, inv)
        if svc.readiness is not None:
            try:
                ready = svc.readiness(inv)
            except Exception as e:
                ready = Readiness(None, error=f"inspection failed: {e}")
            self.app.call_from_thread(self._ready, ready)

    def _status(self, line: str) -> None:
        self.query_one("#inv-status", Static).update(line)

    def _discovered(self, inv) -> None:
        plan = self.app.plan
        plan.inventory = inv
        plan.reset_selection()
        plan.exclude_target_disk()
        self.show()

    def _ready(self, ready) -> None:
        self.app.plan.readiness = ready
        self.show_warnings()


    # ------------------------------------------------------------ drawing
    def show(self) -> None:
        plan = self.app.plan
        inv = plan.inventory
        table = self.query_one("#disks", DataTable)
        row = table.cursor_row
        table.clear()
        for d in inv.disks:
            table.add_row(*cells(*text.disk_row(d, inv, d.name in plan.selected)), key=d.name)
        if inv.disks:
            table.move_cursor(row=min(row, len(inv.disks) - 1))
        n_ctrl = sum(1 for c in inv.controllers if c.kind == "hardware-raid")
        self._status(f"{len(inv.disks)} block devices, {len(inv.controllers)} controllers"
                     + (f" ({n_ctrl} hardware RAID)" if n_ctrl else "")
                     + (f", {len(inv.raid_arrays)} md arrays" if inv.raid_arrays else "")
                     + (f", {len(inv.iscsi_sessions)} iSCSI sessions" if inv.iscsi_sessions else ""))
        sel = self.query_one("#selection", Static)
        sel.update(text.selection_summary(plan.disks()))
        sel.remove_class("error")
        self.show_details()
        self.show_warnings()

    def _refuse(self, line: str) -> None:
        # On the selection line, in words, until the next key: a toast is gone in seconds
        # and easy to miss on a serial console.
        w = self.query_one("#selection", Static)
        w.update(line)
        w.add_class("error")

    def current_disk(self):
        inv = self.app.plan.inventory
        table = self.query_one("#disks", DataTable)
        if inv is None or not inv.disks or table.row_count == 0:
            return None
        return inv.disks[min(table.cursor_row, len(inv.disks) - 1)]

    def show_details(self) -> None:
        d = self.current_disk()
        if d is None:
            return
        lines = text.disk_details(d, self.app.plan.inventory, d.name in self.app.plan.selected)
        self.query_one("#details", Static).update("\n".join(lines))

    def show_warnings(self) -> None:
        plan, svc = self.app.plan, self.app.services
        out = []
        ready = plan.readiness
        if ready is None and svc.readiness is not None:
            out.append("Source OS: inspecting (read-only) ...")
        elif ready is not None and ready.os_name:
            out.append(f"Source OS: {ready.os_name}; cloud readiness: {len(ready.findings)} findings")
            order = {"high": 0, "medium": 1, "low": 2}
            for f in sorted(ready.findings, key=lambda f: (order.get(f.severity, 3), f.id)):
                out.append("  " + text.finding_line(f))
        elif ready is not None:
            out.append("Source OS: none found on the selected disks" + (f" ({ready.error})" if ready.error else ""))
        for w in (plan.inventory.warnings if plan.inventory else []):
            out.append(f"warning: {w}")
        for p in svc.config_problems:
            out.append(f"kernel command line: {p}")
        self.query_one("#warnings", Static).update("\n".join(out) or "No warnings.")

    @on(DataTable.RowHighlighted)
    def _highlighted(self, _event) -> None:
        if self.app.plan.inventory is not None:
            sel = self.query_one("#selection", Static)
            sel.update(text.selection_summary(self.app.plan.disks()))
            sel.remove_class("error")
        self.show_details()

    # ------------------------------------------------------------ actions
    def action_toggle(self) -> None:
        d = self.current_disk()
        if d is None:
            return
        plan = self.app.plan
        if d.name in plan.selected:
            plan.selected.remove(d.name)
        elif not d.capture_default:
            # Never offer what discovery refused (live medium, capture target, md/multipath maps).
            self._refuse(f"{d.name} cannot be captured: {d.exclude_reason}")
            return
        else:
            plan.selected = [x.name for x in plan.inventory.disks if x.name in plan.selected or x is d]
        plan.estimate = None
        self.show()

    def action_next(self) -> None:
        if not self.app.plan.disks():
            self._refuse("Select at least one disk to capture (space)")
            return
        self.app.show_target()

    def action_iscsi(self) -> None:
        self.app.show_iscsi()

    def action_network(self) -> None:
        self.app.show_network()

    def action_rescan(self) -> None:
        self.app.plan.inventory = None
        self.app.plan.readiness = None
        self._status("Discovering disks ...")
        self.discover()

    def action_quit(self) -> None:
        self.app.action_request_quit()
