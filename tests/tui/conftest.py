"""Recorded machines for the TUI tests: udev snapshots (tests/fixtures/udev), source-OS
trees (tests/fixtures/sourceos, tests/fixtures/iscsi) and fixed values where the real ones
vary from run to run (host keys, NIC addresses, the estimate's calibration)."""

from __future__ import annotations

from pathlib import Path

from agent.source.discover.model import Nic
from agent.source.config import CaptureConfig
from agent.source.tui.services import HostKeyInfo, Services

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UDEV = FIXTURES / "udev"
SOURCEOS = FIXTURES / "sourceos"
ISCSI_TREES = FIXTURES / "iscsi"

HOSTKEY = HostKeyInfo("10.0.0.5", 22, "ssh-ed25519", "SHA256:q8mJbJ3Vt1Zb0nHnT3mYpWb3dX7Yc2yYk1o9gVZ6u4E")
NICS = [Nic("eno1", "18:66:da:9e:4f:10", speed_mbps=1000, operstate="up", carrier=True,
            addresses=["192.168.10.31/24"]),
        Nic("eno2", "18:66:da:9e:4f:11", operstate="down", carrier=False)]


class PowerLog(list):
    def __call__(self, action: str) -> None:
        self.append(action)


def replay(machine: str, *, sourceos: str | None = None, boot: str | None = None, **over) -> Services:
    root = None
    if sourceos:
        root = SOURCEOS / sourceos
        if (root / "root").is_dir():     # a tree recorded with a separate /boot
            boot, root = str(root / "boot"), root / "root"
    over.setdefault("probe_hostkey", lambda host, port=22, timeout=10.0: HOSTKEY)
    over.setdefault("list_nics", lambda inv: list(NICS))
    over.setdefault("power", PowerLog())
    over.setdefault("config", CaptureConfig(calibrate=0.0))
    return Services.replay(UDEV / f"{machine}.json", sourceos=root, boot_root=boot, **over)


async def settle(pilot) -> None:
    """Let every worker finish and its results reach the screen."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def on_progress(app, pilot, clock=None):
    """A Progress screen without its capture worker (build_app(..., start_capture_worker=False)),
    for a test to apply recorded events to (at the times of `clock`, recorded.ReplayClock)."""
    from agent.source.tui.screens.progress import ProgressScreen
    from agent.source.tui.services import TargetChoice

    app.plan.target = TargetChoice("file", "file:///srv/images")
    screen = ProgressScreen(clock=clock)
    app.switch_to_progress(screen)
    await pilot.pause()
    return screen
