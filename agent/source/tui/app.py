"""`coldclone tui`: the operator's text interface (textual), keyboard only, 80x24 and up.

The app is built by `build_app(services)`: the screens call the core only through
Services (agent/tui/services.py), so tests run the very same app on recorded
machines. docs/tui.md lists the screens and keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding

from ...errors import EXIT_CANCELLED, EXIT_OK, ColdcloneError
from ..transport.url import parse_target
from .screens.confirm import Confirm
from .screens.done import DoneScreen
from .screens.estimate import EstimateScreen
from .screens.inventory import InventoryScreen
from .screens.iscsi import IscsiScreen
from .screens.network import NetworkScreen
from .screens.progress import ProgressScreen
from .screens.target import TargetScreen
from .services import Services
from .state import CapturePlan
from .widgets.glyphs import ascii_console

log = logging.getLogger("coldclone.tui")
PLAIN_KEYS = {"enter": "Enter", "space": "Space", "escape": "Esc", "tab": "Tab"}
CSS_FILE = Path(__file__).with_name("coldclone.tcss")


def _css() -> str:
    # Read here rather than CSS_PATH: a wheel built without package data must still start
    # (plain layout) instead of failing on a console nobody can debug from.
    try:
        return CSS_FILE.read_text()
    except OSError:
        log.warning("%s missing: plain layout", CSS_FILE)
        return ""


class ColdcloneApp(App):
    CSS = _css()
    TITLE = "coldclone"
    ENABLE_COMMAND_PALETTE = False
    # Ctrl+C is what an operator presses: it asks (cancel the capture / leave), never kills.
    BINDINGS = [Binding("ctrl+q,ctrl+c", "request_quit", "Quit", show=False, priority=True)]

    def __init__(self, services: Services, *, ascii_only: bool | None = None,
                 start_capture_worker: bool = True):
        super().__init__()
        self.services = services
        self.plan = CapturePlan(mode=services.config.mode)
        self.ascii_only = ascii_console() if ascii_only is None else ascii_only
        # Snapshot tests feed recorded events to the Progress screen instead.
        self.start_capture_worker = start_capture_worker
        self.rescan_needed = False

    def on_mount(self) -> None:
        if self.ascii_only:
            self._plain_glyphs()   # class-wide: one console, one app per process
        self.push_screen(InventoryScreen())

    def _plain_glyphs(self) -> None:
        from textual.scrollbar import ScrollBarRender

        # The thumb is drawn in reverse video; the eighth-block edges are Unicode.
        ScrollBarRender.VERTICAL_BARS = [" "] * 8
        ScrollBarRender.HORIZONTAL_BARS = [" "] * 8

    def get_key_display(self, binding: Binding) -> str:
        # Plain names a vt100 can show ("Enter", not a return-arrow glyph).
        if binding.key_display:
            return binding.key_display
        key = binding.key.split(",")[0]
        if key.startswith("ctrl+"):
            return "^" + key[5:].upper()
        return PLAIN_KEYS.get(key, key)

    def on_unmount(self) -> None:
        # iSCSI sessions end and the source server's own address (iscsi_ip=original) leaves
        # the live NIC: the original server may be powered on again after the capture.
        if self.plan.iscsi is not None:
            try:
                self.plan.iscsi.logout(log.info)
            except Exception as e:
                log.warning("iSCSI logout: %s", e)
        # A target disk we mounted is unmounted (synced) before the operator pulls it.
        if self.plan.prepared is not None:
            try:
                self.plan.prepared.close()
            except Exception as e:
                log.warning("unmounting the target disk: %s", e)

    # ---- navigation: the app owns the screen flow; a screen says what the operator chose
    # (screens never import each other).
    def show_target(self) -> None:
        self.push_screen(TargetScreen())

    def show_iscsi(self) -> None:
        self.push_screen(IscsiScreen())

    def show_network(self) -> None:
        self.push_screen(NetworkScreen())

    def show_estimate(self) -> None:
        self.push_screen(EstimateScreen())

    def start_capture(self) -> None:
        self.switch_to_progress(ProgressScreen())

    def switch_to_progress(self, screen) -> None:
        # Inventory/Target/Estimate are left behind: there is no way back into a running capture's
        # inputs, only forward to Done (or cancel).
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self.switch_screen(screen)

    def show_done(self, progress) -> None:
        # A question still open over the Progress screen (cancel?) is moot now: close it first.
        while self.screen is not progress and len(self.screen_stack) > 1:
            self.pop_screen()
        self.switch_screen(DoneScreen())

    def start_again(self) -> None:
        self.switch_screen(InventoryScreen())

    def confirm(self, question: str, details: list[str] | None = None, *, yes: str = "Yes", no: str = "No",
                then: Callable[[bool | None], None]) -> None:
        """Ask a yes/no question over the current screen (No is the default); `then` gets the answer."""
        self.push_screen(Confirm(question, details, yes=yes, no=no), then)

    def action_request_quit(self) -> None:
        if isinstance(self.screen, ProgressScreen) and not self.screen.finished:
            self.screen.action_cancel()
            return
        self.confirm("Leave coldclone for a shell?",
                     ["Nothing has been written anywhere. `coldclone tui` starts it again."], yes="Quit",
                     then=lambda yes: self.exit(EXIT_OK) if yes else None)


def build_app(services: Services, **kw) -> ColdcloneApp:
    return ColdcloneApp(services, **kw)


def _fix_terminal_size() -> None:
    """A serial console often reports 0x0; textual would then draw nothing. Assume 80x24."""
    import fcntl
    import struct
    import termios

    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return
    if size.columns and size.lines:
        return
    rows, cols = int(os.environ.get("LINES") or 24), int(os.environ.get("COLUMNS") or 80)
    try:
        fcntl.ioctl(sys.stdout.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def _default_log() -> str:
    for d in ("/var/log/coldclone", "/tmp"):
        try:
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "tui.log" if d != "/tmp" else "coldclone-tui.log")
            open(path, "a").close()
            return path
        except OSError:
            continue
    return os.devnull


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="coldclone tui", description="The operator's text interface.")
    ap.add_argument("--replay", metavar="SNAPSHOT.json",
                    help="show a recorded machine (coldclone discover --record) instead of this one")
    ap.add_argument("--sourceos", metavar="DIR", help="with --replay: a recorded source-OS tree to inspect")
    ap.add_argument("--include-loop", action="store_true", help="offer loop devices as sources (testing)")
    ap.add_argument("--disks", metavar="sda,sdb", help="preselect only these disks")
    ap.add_argument("--to", metavar="URL", help="prefill the target: ssh://user@host[:port]/path, "
                    "file:///path or nfs://host/export/path (it is still tested before use)")
    ap.add_argument("--identity", metavar="KEY", help="prefill the SSH key for the conversion server")
    ap.add_argument("--calibrate", type=float, metavar="SECONDS",
                    help="seconds of calibration before the estimate (default 3; 0: table rates only)")
    ap.add_argument("--ascii", action="store_true", default=None,
                    help="draw with ASCII only (default: when TERM is vt100/vt220 or the locale is not UTF-8)")
    ap.add_argument("--log", metavar="FILE", default=os.environ.get("COLDCLONE_TUI_LOG"),
                    help="write the log here (default /var/log/coldclone/tui.log)")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ColdcloneError as e:
        print(f"coldclone tui: error: {e}", file=sys.stderr)
        return e.exit_code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # The screen is the console: the log (commands run, guard, host key) goes to a file.
    logging.basicConfig(filename=args.log or _default_log(), level=logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    only = args.disks.split(",") if args.disks else None
    if args.replay:
        services = Services.replay(args.replay, sourceos=args.sourceos)
    else:
        services = Services.real(include_loop=args.include_loop, only=only)
    if args.to:
        parse_target(args.to)   # a typo is a usage error now, not a surprise on the Target screen
        services.config.server = [args.to]
    if args.identity:
        services.config.identity = args.identity
    if args.calibrate is not None:
        services.config.calibrate = args.calibrate
    if sys.stdout.isatty():
        _fix_terminal_size()
    app = build_app(services, ascii_only=args.ascii)
    rc = app.run()
    if rc is None:
        # Left through ctrl+c or a crash textual already reported.
        return EXIT_CANCELLED if app.plan.result is None and app.plan.capture_id else EXIT_OK
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
