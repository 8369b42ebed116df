"""Screen 3: where the images go. SSH conversion server (its host key shown and confirmed
by the operator), a local USB/eSATA disk, or an NFS share; a connection test gates Next."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    Button,
    ContentSwitcher,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    RadioButton,
    RadioSet,
    Static,
)

from ....errors import ColdcloneError, UsageError
from ...transport.localdisk import TargetDisk
from ...transport.url import parse_target
from ....units import human_bytes
from ..services import TargetChoice, test_local
from ..widgets.choice import Choice
from ..widgets.plain import Plain, cells

KINDS = ("ssh", "local", "nfs")


def _ssh_fields(default: str | None):
    """host, port, user, path from a prefilled ssh:// URL (kernel command line)."""
    if default and default.startswith("ssh://"):
        try:
            u = parse_target(default)
            return u.host, str(u.port), u.user or "coldclone", u.path or "/"
        except ColdcloneError:
            pass
    return "", "22", "coldclone", "/"


class TargetScreen(Screen):
    BINDINGS = [
        Binding("ctrl+t", "test", "Test connection"),
        Binding("ctrl+y", "confirm_key", "Host key matches"),
        Binding("ctrl+n", "next", "Next: estimate"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        d = self.app.services.config
        host, port, user, path = _ssh_fields(d.server[0] if d.server else None)
        yield Header(show_clock=False, icon="")
        with RadioSet(id="kind"):
            yield Choice("SSH conversion server", value=True, id="kind-ssh")
            yield Choice("Local USB/eSATA disk", id="kind-local")
            yield Choice("NFS share", id="kind-nfs")
        with ContentSwitcher(initial="ssh", id="kinds"):
            with Vertical(id="ssh"):
                with Horizontal(classes="row"):
                    yield Label("Host", classes="lbl")
                    yield Input(host, placeholder="10.0.0.5", id="host")
                    yield Label("Port", classes="lbl-s")
                    yield Input(port, id="port", classes="short")
                with Horizontal(classes="row"):
                    yield Label("User", classes="lbl")
                    yield Input(user, id="user")
                    yield Label("Path", classes="lbl-s")
                    yield Input(path, id="path")
                with Horizontal(classes="row"):
                    yield Label("Key", classes="lbl")
                    yield Input(d.identity or "", placeholder="/etc/coldclone/identity", id="identity")
            with Vertical(id="local"):
                yield Plain("", id="local-disks-note")
                table = DataTable(id="local-disks", cursor_type="row")
                table.add_columns("Disk", "Size", "Model", "Link")
                yield table
                with Horizontal(classes="row"):
                    yield Label("Format", classes="lbl")
                    yield Input("", placeholder="only to ERASE it: type the chosen disk's name (/dev/sdX)",
                                id="format")
                with Horizontal(classes="row"):
                    yield Label("Or dir", classes="lbl")
                    yield Input("", placeholder="/mnt/target (a disk you mounted yourself)", id="local-path")
            with Vertical(id="nfs"):
                yield Plain("The share is mounted by the live system; images are written under the path.")
                with Horizontal(classes="row"):
                    yield Label("URL", classes="lbl")
                    yield Input(d.server[0] if d.server and d.server[0].startswith("nfs://") else "",
                                placeholder="nfs://10.0.0.5/export/images", id="nfs-url")
        yield Plain("", id="hostkey")
        with Horizontal(id="target-buttons"):
            yield Button("Test (^T)", id="test")
            yield Button("Key matches (^Y)", id="confirm")
            yield Button("Next (^N)", id="next")
        yield Plain("", id="target-status", classes="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  3 Target"
        self.key_info = None          # HostKeyInfo shown, not yet confirmed
        self.candidates: list[TargetDisk] = []
        # pins from the kernel command line (several: a wave's servers; any one may match)
        self.confirmed: list[str] = list(self.app.services.config.hostkey)
        self.query_one("#confirm", Button).display = False
        if self.confirmed:
            self._hostkey_line(f"Host key pinned on the kernel command line: {', '.join(self.confirmed)}")
        self._fill_local()
        server = self.app.services.config.server[0] if self.app.services.config.server else ""
        if server.startswith("file://"):
            self.query_one("#local-path", Input).value = server[len("file://"):]
            self.query_one("#kind-local", RadioButton).value = True
            self.query_one("#local-path", Input).focus()
        elif server.startswith("nfs://"):
            self.query_one("#kind-nfs", RadioButton).value = True
            self.query_one("#nfs-url", Input).focus()
        else:
            self.query_one("#host", Input).focus()

    # ------------------------------------------------------------ helpers
    @property
    def kind(self) -> str:
        return KINDS[self.query_one("#kind", RadioSet).pressed_index]

    def _val(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value.strip()

    def _status(self, line: str, error: bool = False) -> None:
        w = self.query_one("#target-status", Static)
        w.update(line)
        w.set_class(error, "error")

    def _hostkey_line(self, line: str) -> None:
        self.query_one("#hostkey", Static).update(line)

    def _fill_local(self) -> None:
        svc = self.app.services
        note = self.query_one("#local-disks-note", Static)
        table = self.query_one("#local-disks", DataTable)
        if svc.local_disks is None:
            note.update(f"Disk list: {svc.why_missing('local disk target')}. "
                        f"Mount the disk yourself (shell) and give the directory.")
            table.display = False
            return
        try:
            cands = svc.local_disks(self.app.plan.inventory)
        except ColdcloneError as e:
            note.update(f"Disk list failed: {e}")
            return
        note.update("Disks that can take the images (never a source disk):" if cands else
                    "No USB/eSATA disk found that is not a source; plug one in, then come back.")
        table.display = bool(cands)
        self.candidates = cands
        for c in cands:
            table.add_row(*cells(c.dev_path, human_bytes(c.size), (c.model or "-")[:20], c.link or "-"))

    def chosen_disk(self):
        table = self.query_one("#local-disks", DataTable)
        if not self.candidates or not table.display or table.row_count == 0:
            return None
        return self.candidates[min(table.cursor_row, len(self.candidates) - 1)]

    def choice(self) -> TargetChoice:
        """The form as a TargetChoice; raises UsageError on what is missing."""
        kind = self.kind
        if kind == "ssh":
            host, port, user = self._val("host"), self._val("port") or "22", self._val("user")
            if not host:
                raise UsageError("give the conversion server's host name or address")
            if not port.isdigit():
                raise UsageError(f"port {port!r} is not a number")
            path = self._val("path") or "/"
            if not path.startswith("/"):
                path = "/" + path
            url = f"ssh://{user}@{host}:{port}{path}" if user else f"ssh://{host}:{port}{path}"
            return TargetChoice("ssh", url, identity=self._val("identity") or None,
                                hostkey=self.confirmed, known_hosts=self.app.services.config.known_hosts)
        if kind == "nfs":
            url = self._val("nfs-url")
            if not url.startswith("nfs://"):
                raise UsageError("write the share as nfs://HOST/EXPORT[/PATH]")
            return TargetChoice("nfs", url)
        path = self._val("local-path")
        if path:
            if not path.startswith("/"):
                raise UsageError("give the directory where the target disk is mounted (e.g. /mnt/target)")
            return TargetChoice("file", f"file://{path}")
        disk = self.chosen_disk()
        if disk is None:
            raise UsageError("pick the target disk in the list (or give a mounted directory)")
        # The URL is known once the disk is prepared (mounted) by the test.
        return TargetChoice("local", "", local_disk=disk.dev_path)

    # ------------------------------------------------------------ events
    @on(RadioSet.Changed, "#kind")
    def _kind_changed(self, event: RadioSet.Changed) -> None:
        self.query_one("#kinds", ContentSwitcher).current = self.kind
        self.app.plan.target_ok = None
        self._status("")

    @on(Input.Changed)
    def _edited(self, event: Input.Changed) -> None:
        # Any change invalidates the test; a new host invalidates the confirmed key.
        self.app.plan.target_ok = None
        if event.input.id in ("host", "port") and self.key_info is not None:
            self.key_info, self.confirmed = None, []
            self._hostkey_line("")
            self.query_one("#confirm", Button).display = False

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"test": self.action_test, "confirm": self.action_confirm_key, "next": self.action_next}[event.button.id]()

    # ------------------------------------------------------------ actions
    def action_test(self) -> None:
        try:
            choice = self.choice()
        except ColdcloneError as e:
            self._status(str(e), error=True)
            return
        self._status("Testing ...")
        self.run_test(choice)

    @work(thread=True, exclusive=True, group="target")
    def run_test(self, choice: TargetChoice) -> None:
        svc = self.app.services
        try:
            if choice.kind == "ssh":
                url = parse_target(choice.url)
                if not choice.hostkey:
                    info = svc.probe_hostkey(url.host, url.port)
                    self.app.call_from_thread(self._show_key, info)
                    return
                msg = svc.test_ssh(choice)
            else:
                if choice.kind == "local":
                    choice = self._prepare(choice)
                msg = test_local(choice, svc.open_target)
        except ColdcloneError as e:
            self.app.call_from_thread(self._status, f"Test failed: {e}", True)
            return
        except Exception as e:
            self.app.call_from_thread(self._status, f"Test failed (internal error): {e!r}", True)
            return
        self.app.call_from_thread(self._tested, choice, msg)

    def _prepare(self, choice: TargetChoice) -> TargetChoice:
        """Mount the chosen disk's filesystem (or format it, when its name was typed)."""
        svc, plan = self.app.services, self.app.plan
        if svc.prepare_local_disk is None:
            raise UsageError(svc.why_missing("local disk target"))
        fmt = self._val("format") or None
        if plan.prepared is not None:
            plan.prepared.close()
            plan.prepared = None
        prepared = svc.prepare_local_disk(choice.local_disk, format_confirm=fmt, inventory=plan.inventory,
                                          sources=plan.disk_paths())
        plan.prepared = prepared
        return TargetChoice("local", prepared.url, local_disk=choice.local_disk)

    def _show_key(self, info) -> None:
        self.key_info = info
        self._hostkey_line(
            f"{info.host}:{info.port} presents {info.key_type} {info.fingerprint}\n"
            f"Compare on the server: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub. "
            f"Same? Key matches (^Y), then Test again.")
        self.query_one("#confirm", Button).display = True
        self._status("Host key NOT trusted yet: confirm it matches the conversion server's.")

    def _tested(self, choice: TargetChoice, msg: str) -> None:
        plan = self.app.plan
        plan.target = choice
        plan.exclude_target_disk()
        self.app.plan.target_ok = msg
        self.app.plan.estimate = None
        self._status(msg + "  Next (^N).")

    def action_confirm_key(self) -> None:
        if self.key_info is None:
            self._status("Test first (^T): it shows the server's host key", error=True)
            return
        self.confirmed = [self.key_info.fingerprint]
        self.query_one("#confirm", Button).display = False
        self._hostkey_line(f"Host key confirmed by the operator: {self.key_info.key_type} {self.confirmed[0]}")
        self.action_test()

    def action_next(self) -> None:
        if not self.app.plan.target_ok:
            self._status("Test the connection first (^T): no capture goes to an untested target",
                         error=True)
            return
        self.app.show_estimate()

    def action_back(self) -> None:
        self.app.pop_screen()
