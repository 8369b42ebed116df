"""Screen 2: software iSCSI. The identity the source OS used (initiator name, CHAP,
targets, its own IP address), the login with that identity, and targets added by hand.
Secrets are never drawn: CHAP passwords show as ****."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, RichLog, Static

from ....errors import ColdcloneError
from ....guestos.model import Secret
from ...iscsi.auto import IscsiAttachment
from ...iscsi.model import Chap, IscsiTarget, SourceIscsiConfig, make_portal, split_portal
from ..text import clip
from ..widgets.plain import Plain, cells


def _chap_text(ident: SourceIscsiConfig | None, target: IscsiTarget) -> str:
    """The CHAP a login will use, secret masked; a target typed by hand carries its own."""
    chap = ident.chap_for(target) if ident is not None else target.auth
    if chap is None or not chap.enabled:
        return "none"
    return f"{chap.username or '?'}/****" + (" mutual" if chap.mutual else "")


class IscsiScreen(Screen):
    BINDINGS = [
        Binding("ctrl+l", "login", "Log in"),
        Binding("ctrl+g", "add", "Add/change target"),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="")
        with VerticalScroll(id="ident-box"):
            yield Plain("Reading the source OS's iSCSI configuration (read-only) ...", id="ident")
        table = DataTable(id="targets", cursor_type="row")
        table.add_columns("Target IQN", "Portal", "CHAP user/secret")
        yield table
        with Horizontal(classes="row"):
            yield Label("Our IP", classes="lbl")
            yield Input("original", id="iscsi-ip")
            yield Button("Log in (^L)", id="login")
        with Horizontal(classes="row"):
            yield Input(placeholder="portal host[:port]", id="add-portal")
            yield Input(placeholder="target IQN", id="add-iqn")
        with Horizontal(classes="row"):
            yield Input(placeholder="CHAP user (optional)", id="add-user")
            yield Input(placeholder="CHAP secret", password=True, id="add-secret")
            yield Button("Add (^G)", id="add")
        yield RichLog(id="iscsi-log", wrap=True, markup=False, max_lines=300)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "coldclone  2 iSCSI"
        self.identity: SourceIscsiConfig | None = None
        self.added: list[IscsiTarget] = []            # targets typed by hand
        self.edited: dict[str, IscsiTarget] = {}      # IQN -> the source's target with the operator's changes
        svc = self.app.services
        if svc.find_identities is None:
            self.query_one("#ident", Static).update(
                f"{svc.why_missing('iSCSI')}.\nLog in by hand from the shell (iscsiadm), then rescan (r).")
            return
        if self.app.plan.iscsi is not None:
            self._log("already logged in: " + ", ".join(self._lun_names(self.app.plan.iscsi)))
        self.find()

    @work(thread=True, exclusive=True, group="iscsi")
    def find(self) -> None:
        try:
            found = self.app.services.find_identities(self.app.plan.inventory)
        except ColdcloneError as e:
            self.app.call_from_thread(self._ident_text, f"Could not read the source's iSCSI settings: {e}")
            return
        except Exception as e:
            self.app.call_from_thread(self._ident_text, f"Could not read the source's iSCSI settings "
                                                        f"(internal error): {e!r}")
            return
        self.app.call_from_thread(self._found, found)

    def _ident_text(self, line: str) -> None:
        self.query_one("#ident", Static).update(line)

    def _found(self, found: list[SourceIscsiConfig]) -> None:
        if not found:
            self._ident_text("No iSCSI initiator configuration in the source OS. Add a target by hand: "
                             "the login then uses this live system's own initiator name.")
            return
        self.identity = found[0]
        lines = self.identity.describe()
        if len(found) > 1:
            lines.append(f"({len(found) - 1} more identities found; the first is used)")
        self._ident_text("\n".join(lines))
        iface = self.identity.interface
        if iface is not None and iface.cidr:
            self.query_one("#iscsi-ip", Input).placeholder = f"original = {iface.cidr}"
        self._show_targets()

    def _targets(self) -> list[IscsiTarget]:
        own = [self.edited.get(t.iqn, t) for t in (self.identity.targets if self.identity else [])]
        return own + self.added

    @on(DataTable.RowSelected, "#targets")
    def _edit(self, event: DataTable.RowSelected) -> None:
        # Enter on a target: its fields go into the form; Add (^G) then replaces it.
        t = self._targets()[event.cursor_row]
        chap = t.auth if t.auth is not None else None
        self.query_one("#add-portal", Input).value = t.portal
        self.query_one("#add-iqn", Input).value = t.iqn
        self.query_one("#add-user", Input).value = (chap.username or "") if chap else ""
        self.query_one("#add-secret", Input).value = ""
        self.query_one("#add-portal", Input).focus()
        self._log(f"editing {t.iqn}: an empty secret keeps the recorded one")

    def _show_targets(self) -> None:
        table = self.query_one("#targets", DataTable)
        table.clear()
        for t in self._targets():
            table.add_row(*cells(clip(t.iqn, 36), t.portal, _chap_text(self.identity, t)))

    def _log(self, line: str) -> None:
        self.query_one("#iscsi-log", RichLog).write(line)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_login() if event.button.id == "login" else self.action_add()

    # ------------------------------------------------------------ actions
    def action_add(self) -> None:
        portal = self.query_one("#add-portal", Input).value.strip()
        iqn = self.query_one("#add-iqn", Input).value.strip()
        user = self.query_one("#add-user", Input).value.strip()
        secret = self.query_one("#add-secret", Input).value
        if not portal or not iqn.startswith(("iqn.", "eui.", "naa.")):
            self._log("give the portal (host or host:port) and the target name (iqn.YYYY-MM....)")
            return
        try:
            host, port = split_portal(portal)
        except ValueError as e:
            self._log(str(e))
            return
        old = next((t for t in self._targets() if t.iqn == iqn), None)
        auth = Chap(username=user, password=Secret(secret), authmethod="CHAP") if user and secret else None
        if user and not secret and old is not None and old.auth is not None and old.auth.username == user:
            auth = old.auth      # edited portal, same credentials
        elif user and not secret:
            self._log("give the CHAP secret for that user (or leave the user empty: no CHAP)")
            return
        new = IscsiTarget(iqn=iqn, portal=make_portal(host, port), auth=auth)
        own = [t.iqn for t in (self.identity.targets if self.identity else [])]
        if iqn in own:
            self.edited[iqn] = new
        else:
            self.added = [t for t in self.added if t.iqn != iqn] + [new]
        for wid in ("add-portal", "add-iqn", "add-user", "add-secret"):
            self.query_one(f"#{wid}", Input).value = ""
        self._log(f"{'changed' if old else 'added'} {iqn} at {new.portal}"
                  + (f", CHAP user {user} secret ****" if auth else ", no CHAP"))
        self._show_targets()

    def action_login(self) -> None:
        svc = self.app.services
        if svc.iscsi_attach is None:
            self._log(svc.why_missing("iSCSI"))
            return
        # a source with only discovery (sendtargets) records logs in to what discovery finds
        if not self._targets() and not (self.identity and self.identity.discovery_portals):
            self._log("no target to log in to: add one")
            return
        if self.identity is None:
            if svc.live_identity is None:
                self._log(svc.why_missing("iSCSI"))
                return
            try:
                self.identity = svc.live_identity()
            except ColdcloneError as e:
                self._log(str(e))
                return
            self._log(f"no identity in the source OS: logging in as this live system, "
                      f"{self.identity.initiator_name} (the array's ACL must admit it)")
        ip = self.query_one("#iscsi-ip", Input).value.strip() or "original"
        self._log(f"logging in to {len(self._targets())} target(s) ...")
        self.login(ip)

    @work(thread=True, exclusive=True, group="iscsi-login")
    def login(self, ip: str) -> None:
        say = lambda line: self.app.call_from_thread(self._log, line)
        try:
            att = self.app.services.iscsi_attach(self.identity, self._targets(), ip, say)
        except ColdcloneError as e:
            say(f"login failed: {e}")
            return
        except Exception as e:
            say(f"login failed (internal error): {e!r}")
            return
        self.app.call_from_thread(self._attached, att)

    @staticmethod
    def _lun_names(att: IscsiAttachment) -> list[str]:
        return [f"{lun.path} (LUN {lun.lun})" for lun in att.luns]

    def _attached(self, att: IscsiAttachment) -> None:
        self.app.plan.iscsi = att
        self._log("logged in; LUNs: " + (", ".join(self._lun_names(att)) or "none")
                  + ". Back (Esc) shows them in the inventory.")
        self.app.rescan_needed = True

    def action_back(self) -> None:
        self.app.pop_screen()
