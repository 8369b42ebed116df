"""The live system's network: DHCP or a static address on a chosen NIC (no DHCP on many
server segments). The core is agent.source.netsetup; this screen only shows and asks."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, RichLog

from ....errors import ColdcloneError
from ...netsetup import parse_ip_spec
from ..widgets.plain import Plain, cells

HELP = ("dhcp  |  IFACE:dhcp  |  [IFACE:]ADDRESS/PREFIX[,gw=GATEWAY][,dns=SERVER]\n"
        "e.g. eth0:192.168.10.21/24,gw=192.168.10.1,dns=192.168.10.2")


class NetworkScreen(Screen):
    BINDINGS = [
        Binding("ctrl+g", "apply", "Apply"),
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="")
        yield Plain("Network of the live system (not of the source server's OS)", classes="heading")
        table = DataTable(id="nics", cursor_type="row")
        table.add_columns("NIC", "MAC", "Speed", "State", "Addresses")
        yield table
        yield Plain(HELP, id="net-help")
        with Horizontal(classes="row"):
            yield Label("Set", classes="lbl")
            yield Input(self.app.services.config.ip or "dhcp", id="ip-spec")
            yield Button("Apply (Enter)", id="apply")
        yield RichLog(id="net-log", wrap=True, markup=False, max_lines=200)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  Network"
        self.action_refresh()
        self.query_one("#ip-spec", Input).focus()

    def action_refresh(self) -> None:
        self.load_nics()

    @work(thread=True, exclusive=True, group="nics")
    def load_nics(self) -> None:
        try:
            nics = self.app.services.list_nics(self.app.plan.inventory)
        except Exception as e:
            self.app.call_from_thread(self._log, f"cannot list NICs: {e}")
            return
        self.app.call_from_thread(self._show_nics, nics)

    def _show_nics(self, nics) -> None:
        table = self.query_one("#nics", DataTable)
        table.clear()
        for n in nics:
            speed = f"{n.speed_mbps} Mb/s" if n.speed_mbps else ("no link" if n.carrier is False else "-")
            table.add_row(*cells(n.name, n.mac or "-", speed, n.operstate or "-", ", ".join(n.addresses) or "-"),
                          key=n.name)

    def _log(self, line: str) -> None:
        self.query_one("#net-log", RichLog).write(line)

    @on(DataTable.RowSelected, "#nics")
    def _pick(self, event: DataTable.RowSelected) -> None:
        # Enter on a NIC: start the spec with its name, keep what was typed after it.
        spec = self.query_one("#ip-spec", Input)
        rest = spec.value.split(":", 1)[1] if ":" in spec.value and not spec.value[0].isdigit() else spec.value
        spec.value = f"{event.row_key.value}:{rest or 'dhcp'}"
        spec.focus()

    @on(Input.Submitted, "#ip-spec")
    def _submitted(self, _event) -> None:
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_apply()

    def action_apply(self) -> None:
        text = self.query_one("#ip-spec", Input).value
        try:
            parse_ip_spec(text)
        except ColdcloneError as e:
            self._log(str(e))
            return
        self._log(f"applying {text} ...")
        self.apply_spec(text)

    @work(thread=True, exclusive=True, group="net")
    def apply_spec(self, text: str) -> None:
        try:
            lines = self.app.services.apply_network(text)
        except ColdcloneError as e:
            self.app.call_from_thread(self._log, f"failed: {e}")
            return
        except Exception as e:
            self.app.call_from_thread(self._log, f"failed (internal error): {e!r}")
            return
        for line in lines:
            self.app.call_from_thread(self._log, line)
        self.app.call_from_thread(self.load_nics)

    def action_back(self) -> None:
        self.app.pop_screen()
