"""Fixed estimate, capture events and result for the screens that show them (snapshots must
not depend on this machine's speed or clock). Built from the real core classes."""

from __future__ import annotations

import time

from agent import protocol as P
from agent.source.capture import events as E
from agent.source.capture.session import CaptureResult
from agent.source.capture.source import SourceDisk
from agent.source.estimate.plan import CaptureEstimate, DiskEstimate
from agent.manifest import Manifest, ManifestDisk, Verified

GiB = 1 << 30
SDA = 298_999_349_248          # megaraid_sas.json: PERC H730P logical drives
SDB = 1_796_906_942_464
TARGET = "ssh://coldclone@10.0.0.5:22/srv/coldclone"


def estimate(mode: str = "nonzero") -> CaptureEstimate:
    disks = [
        DiskEstimate("/dev/sda", "sda", SDA, SDA, 41 * GiB, 52 * GiB, 1_010.0, "link"),
        DiskEstimate("/dev/sdb", "sdb", SDB, SDB, 310 * GiB, 402 * GiB, 6_220.0, "read"),
    ]
    return CaptureEstimate(mode=mode, target=TARGET, link=None, link_rate=117e6,
                           link_rate_source="table (1 GbE)", disks=disks, total_seconds=7_230.0,
                           finish_time="2026-11-23T15:05:00", bottleneck="limited by the 1 GbE link (~117 MB/s)")


def sources() -> list[SourceDisk]:
    return [SourceDisk("/dev/sda", "sda", "sda", SDA, 512, 512, "PERC H730P Mini"),
            SourceDisk("/dev/sdb", "sdb", "sdb", SDB, 512, 512, "PERC H730P Mini")]


def events() -> list:
    """sda done, sdb a third in: what the Progress screen shows 25 minutes into a capture."""
    out: list = [E.CaptureStarted("srv01-20261123T130000-ab12", TARGET, sources(), SDA + SDB),
                 E.DiskStarted("sda", "/dev/sda", SDA)]
    t, read, wire, zero = 0.0, 0, 0, 0
    step = SDA // 10
    for i in range(1, 11):
        t += 100.0
        read += step
        wire += step // 6
        zero += step // 2
        out.append(E.Progress("sda", i * step, SDA, i * step, SDA + SDB, read, wire, zero, t))
    out.append(E.DiskFinished("sda", "3f9a" * 16, {}))
    out.append(E.DiskStarted("sdb", "/dev/sdb", SDB))
    step = SDB // 30
    for i in range(1, 11):
        t += 45.0 + (i % 3) * 10
        read += step
        wire += step // 8
        zero += step // 3
        out.append(E.Progress("sdb", i * step, SDB, SDA + i * step, SDA + SDB, read, wire, zero, t))
    return out


class ReplayClock:
    """The clock a recorded capture ran by: each Progress event came at its `elapsed` seconds
    after CaptureStarted (the figures of a replay are the same on every machine)."""

    START = 1000.0

    def __init__(self) -> None:
        self.t = self.START

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def replay_into(feed, clock: ReplayClock, evs: list | None = None) -> None:
    """Feed recorded events to a front end (ProgressPrinter, ProgressScreen.apply) at their times."""
    for ev in events() if evs is None else evs:
        if isinstance(ev, E.Progress):
            clock.t = ReplayClock.START + ev.elapsed
        feed(ev)


def result() -> CaptureResult:
    disks = [ManifestDisk(name=n, image=f"{n}.qcow2", format="qcow2", size=size, digest=d * 16,
                          digest_algo="sha256-blocks", verified=Verified(True, True, True, True))
             for n, d, size in (("sda", "3f9a", SDA), ("sdb", "c01d", SDB))]
    manifest = Manifest(capture_id="srv01-20261123T130000-ab12", status="complete", disks=disks)
    return CaptureResult(capture_id="srv01-20261123T130000-ab12", target=TARGET,
                         location="/srv/coldclone/srv01-20261123T130000-ab12", manifest=manifest,
                         elapsed=6_912.4, bytes_read=SDA + SDB, wire_bytes=298 * GiB,
                         zero_bytes=1_402 * GiB, total_size=SDA + SDB)


def unfinished() -> list[P.Unfinished]:
    """What the server holds of these disks after a power cut of the source 45 minutes ago:
    sda verified, sdb 120 GiB in (matched by the PERC volumes' WWNs)."""
    sda = P.DiskIdentity.of("sda", SDA, wwid="naa.61866da0b4a8e9002a3f0c1d2e3f4051")
    sdb = P.DiskIdentity.of("sdb", SDB, wwid="naa.61866da0b4a8e9002a3f0c1d2e3f4052")
    return [P.Unfinished("srv01-20261123T130000-ab12", (P.UnfinishedDisk(sda, SDA, complete=True),
                                                        P.UnfinishedDisk(sdb, 120 * GiB)),
                         updated=time.time() - 45 * 60, matched_by="wwid")]


def used_estimate() -> CaptureEstimate:
    """The same server in mode=used: only the filesystems' blocks are read (52 and 402 GiB), at
    the PERC volumes' read rates; the 1 GbE link is the cold capture's bottleneck."""
    disks = [
        DiskEstimate("/dev/sda", "sda", SDA, 52 * GiB, 41 * GiB, 52 * GiB, 377.0, "link",
                     stages={"read": 186.1, "cpu": 120.0, "link": 376.3, "server": 0.1}, read_rate=300e6),
        DiskEstimate("/dev/sdb", "sdb", SDB, 402 * GiB, 310 * GiB, 402 * GiB, 2_845.0, "link",
                     stages={"read": 1_488.4, "cpu": 900.0, "link": 2_844.9, "server": 0.1}, read_rate=290e6),
    ]
    return CaptureEstimate(mode="used", target=TARGET, link=None, link_rate=117e6,
                           link_rate_source="table (1 GbE)", disks=disks, total_seconds=3_223.0,
                           finish_time="2026-11-23T14:00:00", bottleneck="limited by the 1 GbE link (~117 MB/s)")


def warm_unfinished() -> list[P.Unfinished]:
    """A warm capture of these disks (READY.unfinished with `warm`): three nightly syncs, the last
    one 3 hours ago finding 6 GiB changed in the 12 hours before it."""
    sda = P.DiskIdentity.of("sda", SDA, wwid="naa.61866da0b4a8e9002a3f0c1d2e3f4051")
    sdb = P.DiskIdentity.of("sdb", SDB, wwid="naa.61866da0b4a8e9002a3f0c1d2e3f4052")
    last = time.time() - 3 * 3600
    return [P.Unfinished("srv01-20261120T220000-cd34", (P.UnfinishedDisk(sda, SDA, complete=True),
                                                        P.UnfinishedDisk(sdb, SDB, complete=True)),
                         updated=last, matched_by="wwid",
                         warm=P.WarmFacts(syncs=3, last_sync=last, changed_bytes=6 * GiB, interval=12 * 3600))]
