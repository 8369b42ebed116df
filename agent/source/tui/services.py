"""The core calls the TUI makes, gathered in one object so tests can swap the machine.

`Services.real()` wires the running machine (udev discovery, read-only
inspection, iscsiadm, sshd, the capture engine). `Services.replay()` runs the
same screens on a recorded machine: a udev snapshot (tests/fixtures/udev) and
optionally a recorded source-OS tree, recorded iSCSI identities and a recorded
estimate; everything not recorded (target, capture) stays real.

Parts of the core that are not in this build (another engineer's module not
merged yet, a missing tool) are None here with the reason in `missing`; the
screens then show one plain "not available" line instead of failing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import config, netsetup
from ... import protocol as P
from ..config import CaptureConfig
from ..discover import snapshot as snap
from ..capture import lookup
from ..capture.session import CaptureResult
from ..discover.model import Inventory, Nic
from ..discover.populate import discover, from_snapshot
from ...errors import ColdcloneError, UsageError
from ..estimate.plan import CaptureEstimate, estimate_capture
from ...guestos.report import ReadinessReport, from_source  # noqa: F401 (Services.real)
from ..inspect.report import inspect_inventory  # noqa: F401 (Services.real)
from ...guestos.tree import inspect_tree
from ..iscsi import auto as iscsi_auto
from ..iscsi.auto import IscsiAttachment
from ..iscsi.model import SourceIscsiConfig
from ..job import CaptureJob
from ...runcmd import run
from ..transport import localdisk
from ..transport.localdisk import PreparedTarget, TargetDisk
from ..transport.open import Target, open_target
from ..transport.ssh import handshake, server_host_key
from ..transport.url import TargetURL, parse_target, redact
from ...units import human_bytes

log = logging.getLogger("coldclone.tui")


@dataclass
class HostKeyInfo:
    """The conversion server's host key, shown to the operator before anything is trusted."""

    host: str
    port: int
    key_type: str
    fingerprint: str        # SHA256:...


@dataclass
class TargetChoice:
    """Where the images go, as the operator set it on the Target screen."""

    kind: str                       # ssh | local | nfs | file
    url: str                        # ssh://user@host:port/path, file:///..., nfs://...
    identity: str | None = None
    hostkey: list[str] = field(default_factory=list)   # the pin(s) confirmed or given
    known_hosts: str | None = None
    local_disk: str | None = None   # /dev/sdX when kind == local (excluded from the sources)

    def describe(self) -> str:
        return redact(self.url) + (f" (host key {', '.join(self.hostkey)})" if self.hostkey else "")


# What inspection of the source OS found (None os_name: no OS found on the disks): the
# core's report, which the capture also puts into the manifest.
Readiness = ReadinessReport


def probe_hostkey(host: str, port: int = 22, timeout: float = 10.0) -> HostKeyInfo:
    """Fetch the server's host key without trusting or authenticating anything."""
    key_type, fp = server_host_key(TargetURL("ssh", "/", host=host, port=port), timeout)
    return HostKeyInfo(host, port, key_type, fp)


def test_ssh(choice: TargetChoice, timeout: float = 10.0) -> str:
    """Host key check plus key authentication, without starting a capture on the server:
    the capture's own handshake (transport.ssh.handshake), stopped before the receiver."""
    url = parse_target(choice.url)
    if not choice.identity:
        raise UsageError("give the private key for the conversion server (Key field)")
    if not choice.hostkey and not choice.known_hosts:
        raise UsageError("confirm the server's host key first (t shows it, y confirms)")
    t, how = handshake(url, identity=choice.identity, hostkey=choice.hostkey,
                       known_hosts=choice.known_hosts, timeout=timeout)
    t.close()
    return f"SSH OK: {url.user}@{url.host}:{url.port}, host key trusted by {how}, key accepted"


def test_local(choice: TargetChoice, open_target) -> str:
    """A local or NFS target: open it and check we can write there."""
    target = open_target(choice.url)
    try:
        path = target.local_path or ""
        if not os.path.isdir(path):
            raise UsageError(f"{path} is not a directory: mount the target disk there first")
        probe = os.path.join(path, ".coldclone-write-test")
        try:
            with open(probe, "w") as f:
                f.write("ok\n")
            os.unlink(probe)
        except OSError as e:
            raise UsageError(f"cannot write in {path}: {e.strerror}") from None
        st = os.statvfs(path)
        return f"writable: {path}, {human_bytes(st.f_bavail * st.f_frsize)} free"
    finally:
        target.close()


def find_unfinished(choice: TargetChoice, paths: list[str]) -> list[P.Unfinished]:
    """The server's unfinished captures of these disks (capture.lookup), over the capture's own path."""
    target = open_target(choice.url, identity=choice.identity, hostkey=choice.hostkey, known_hosts=choice.known_hosts)
    try:
        return lookup.find_unfinished(target.connect, paths)
    finally:
        target.close()


def power(action: str) -> None:
    if action in ("poweroff", "reboot"):
        run(["systemctl", action])


@dataclass
class Services:
    discover: Callable[[], Inventory]
    readiness: Callable[[Inventory], Readiness] | None       # mounts, slow
    find_identities: Callable[[Inventory], list[SourceIscsiConfig]] | None
    iscsi_attach: Callable[..., IscsiAttachment] | None      # (identity, targets, iscsi_ip, say)
    estimate: Callable[..., CaptureEstimate] | None          # estimate_capture(...)
    # (target, disk paths) -> the server's unfinished captures of those disks, newest first
    find_unfinished: Callable[[TargetChoice, list[str]], list[P.Unfinished]] | None
    local_disks: Callable[[Inventory], list[TargetDisk]] | None    # candidate target disks
    prepare_local_disk: Callable[..., PreparedTarget] | None       # localdisk.prepare(dev, format_confirm=, ...)
    probe_hostkey: Callable[..., HostKeyInfo]
    test_ssh: Callable[[TargetChoice], str]
    open_target: Callable[..., Target]                       # agent.source.transport.open.open_target
    run_capture: Callable[..., CaptureResult]                # (CaptureConfig, prepared=, notify=, cancel=)
    list_nics: Callable[[Inventory | None], list[Nic]]
    apply_network: Callable[[str], list[str]]
    power: Callable[[str], None]
    # The one capture configuration (agent/config.py), prefilled from the kernel command line
    # and the ISO's baked key; the screens change it, the capture job runs it.
    config: CaptureConfig = field(default_factory=CaptureConfig)
    config_problems: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    # Fixed values make snapshots deterministic; None: the real ones.
    capture_id: Callable[[], str] | None = None
    # the live system's own iSCSI identity, for typed targets when the source OS has none
    live_identity: Callable[[], SourceIscsiConfig] | None = None

    def why_missing(self, feature: str) -> str:
        return self.missing.get(feature, f"{feature} is not available in this build")

    # ------------------------------------------------------------- constructors
    @classmethod
    def _base(cls, discover, readiness, **over) -> "Services":
        # Every part of the core is in every build; `missing` stays for what a machine lacks
        # (a test can also mark a feature missing to see the screens' "not available" path).
        missing: dict[str, str] = {}

        def attach(identity, targets, iscsi_ip, say):
            # Targets the operator added by hand join the source's own node records.
            return iscsi_auto.attach(dataclasses.replace(identity, targets=list(targets)),
                                     iscsi_ip=iscsi_ip, say=say)

        def apply_network(text: str) -> list[str]:
            return netsetup.apply(netsetup.parse_ip_spec(text)).lines

        kw = dict(discover=discover, readiness=readiness, find_identities=iscsi_auto.find_identities,
                  iscsi_attach=attach, estimate=estimate_capture, find_unfinished=find_unfinished,
                  local_disks=localdisk.candidates,
                  prepare_local_disk=localdisk.prepare, probe_hostkey=probe_hostkey, test_ssh=test_ssh,
                  open_target=open_target, run_capture=run_job,
                  list_nics=lambda inv: netsetup.list_nics(inv), apply_network=apply_network,
                  power=power, missing=missing, live_identity=iscsi_auto.live_identity)
        kw.update(over)
        return cls(**kw)

    @classmethod
    def real(cls, *, include_loop: bool = False, only: list[str] | None = None,
             cmdline: str | None = None, **over) -> "Services":
        """The running machine. `only`: preselect these disks (the rest stay listed)."""
        cfg, problems = config_from_cmdline(cmdline)

        def do_discover():
            return discover(include_loop=include_loop, only=only)

        over.setdefault("config", cfg)
        over.setdefault("config_problems", problems)
        return cls._base(do_discover, inspect_inventory, **over)

    @classmethod
    def replay(cls, snapshot: str | Path, *, sourceos: str | Path | None = None,
               boot_root: str | Path | None = None, identities: list[SourceIscsiConfig] | None = None,
               estimate: CaptureEstimate | None = None, **over) -> "Services":
        """A recorded machine: udev snapshot, optional source-OS tree, iSCSI identities, estimate."""
        data = snap.load(snapshot)

        def do_discover():
            return from_snapshot(data)

        readiness = None
        if sourceos is not None:
            def replay_readiness(inv, root=str(sourceos), boot=boot_root):
                src = inspect_tree(root, boot_root=str(boot) if boot else None,
                                   disk_count=len(inv.capture_set()))
                return from_source(src, None)
            readiness = replay_readiness
        if identities is not None:
            over.setdefault("find_identities", lambda inv: list(identities))
        if estimate is not None:
            over.setdefault("estimate", lambda *a, **k: estimate)
        # A recorded machine's disks are not on any server (a test hands in recorded finds).
        over.setdefault("find_unfinished", None)
        svc = cls._base(do_discover, readiness, **over)
        if identities is not None:
            svc.missing.pop("iSCSI", None)
        if estimate is not None:
            svc.missing.pop("estimate", None)
        return svc


def config_from_cmdline(cmdline: str | None = None) -> tuple[CaptureConfig, list[str]]:
    """Prefill from coldclone.* words (and the key baked into the ISO); never fatal here: the
    problems are shown on the Inventory screen."""
    try:
        text = cmdline if cmdline is not None else config.read_kernel_cmdline()
    except ColdcloneError:
        text = ""
    try:
        return config.from_cmdline(text), []
    except ColdcloneError as e:
        cfg = config.CaptureConfig()
        config.apply_baked(cfg, "/")
        return cfg, [str(e)]


def run_job(cfg: CaptureConfig, **kw):
    """The TUI's capture: the one capture job, with the steps its screens did handed in."""
    return CaptureJob(cfg, **kw).run()
