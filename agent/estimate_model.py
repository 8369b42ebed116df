"""The estimate as data: what the agent predicts before a capture (the downtime, per disk and per
stage, the link, the calibration), as `coldclone estimate --json` prints it, HELLO carries it
and manifest.json keeps it (`estimate`). Shared by both programs: the agent makes it
(agent.source.estimate.plan), the receiver records it next to what the capture took.
Written and read through agent.records (msgspec), like every JSON model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .units import MB
from .units import human_bytes as hb
from .units import human_minutes
from .units import human_seconds as hs


@dataclass
class LinkEstimate:
    """The link a capture's bytes leave through, and the rate the estimate assumes for it."""

    kind: str            # usb / sata / nfs / ssh / local / loopback
    label: str           # "USB 2.0 link", "SSH over eth0 (1000 Mb/s)"
    rate: float | None   # effective bytes/s; None: not a limit (loopback, local filesystem)
    source: str          # where the figure comes from
    name: str = ""       # usb port / ata port / interface

    def describe(self) -> str:
        if self.rate is None:
            return self.label
        return f"{self.label} (~{self.rate / MB:.0f} MB/s)"


@dataclass
class SampleFacts:
    """What content sampling found on a disk (agent.source.estimate.sample.ContentSample holds
    these and the sampled buffers)."""

    size: int
    samples: int
    sampled_bytes: int
    nonzero_fraction: float      # of the disk's blocks, in the chosen mode's terms
    compress_ratio: float        # payload / raw bytes of the data blocks (1.0: incompressible)
    cpu_per_byte: float          # CPU seconds per disk byte (zero test, sha256, zstd), one thread
    sample_seconds: float        # wall time the sampling took
    read_fraction: float = 1.0   # of the disk's bytes the capture reads (mode=used: the used map's share)


@dataclass
class ReadTiming:
    """A timed read of a source disk (calibration)."""

    rate: float                  # bytes/s
    bytes: int
    cpu_per_byte: float          # this process's CPU seconds per byte
    cpu_share: float = 0.0       # of a core the machine spent busy meanwhile (0: the disk waits)


@dataclass
class ProbeResult:
    """The calibration probe through the real target (agent.source.estimate.calibrate)."""

    disk_bytes: int          # source bytes the probe's records stand for (zero blocks included)
    wire_bytes: int          # stream bytes sent
    data_bytes: int          # non-zero bytes among them
    seconds: float           # first record processed -> receiver has it all verified and on disk
    rate: float              # wire bytes/s end to end
    disk_rate: float         # source bytes/s end to end (CPU, link and server together)
    readback_rate: float | None   # bytes/s the receiver re-reads and hashes (post-capture verification)
    receiver_seconds: float
    cpu_seconds: float = 0.0      # this process's CPU (and a local receiver's) during the probe
    sync_seconds: float = 0.0     # the receiver waiting for its disk (fdatasync); apart from the link
    write_rate: float | None = None   # data bytes/s the target's disk took (written / sync wait)


@dataclass
class Calibration:
    """What calibration measured: timed reads per source path, the probe, or why it failed."""

    read: dict[str, ReadTiming] = field(default_factory=dict)
    probe: ProbeResult | None = None
    probe_error: str | None = None


@dataclass
class DiskEstimate:
    path: str
    name: str
    size: int
    bytes_to_read: int
    bytes_to_send: int         # on the wire, after zero-skip and compression
    data_bytes: int            # non-zero bytes (the receiver writes and verifies these)
    seconds: float
    bottleneck: str            # stage key: read / cpu / link / write / shared / server
    stages: dict[str, float] = field(default_factory=dict)   # stage key -> seconds
    nonzero_fraction: float = 0.0
    compress_ratio: float = 1.0
    read_rate: float = 0.0
    read_rate_source: str = ""
    sample: SampleFacts | None = None


@dataclass
class Alternative:
    """The same capture over another kind of link: what the operator could choose instead."""

    label: str
    rate: float
    seconds: float


@dataclass
class CutoverEstimate:
    """The predicted cold phase of a cutover from a warm capture (docs/two-phase.md), next to the
    cold estimate: read what the cold capture reads at the disks' rate (every block's digest is
    compared with the receiver's held map), send what changed since the last sync over the
    link, plus the fixed costs the cold estimate counts. The manifest's disks' `cutover.seconds`
    are the measured figures to hold it against."""

    capture_id: str              # the warm capture it cuts over
    syncs: int
    last_sync: float             # when its last sync was stored (epoch seconds)
    since_last_sync: float       # seconds from then to this prediction
    change_rate: float | None    # bytes/s changed between the last two syncs (None: one sync only)
    changed_bytes: int           # predicted to differ at the cutover (capped at the bytes read)
    bytes_to_read: int
    read_seconds: float
    send_seconds: float
    fixed_seconds: float         # setup, the server's steps after the last byte, used maps
    seconds: float               # the sum: the predicted downtime
    basis: str                   # how changed_bytes was predicted, in words

    def line(self) -> str:
        return (f"cutover of warm capture {self.capture_id} ({self.syncs} sync{'s' if self.syncs != 1 else ''}, "
                f"the last {human_minutes(self.since_last_sync)} ago): ~{hs(self.seconds)} "
                f"({human_minutes(self.seconds)}) of downtime: read {hb(self.bytes_to_read)} "
                f"{hs(self.read_seconds)}, send ~{hb(self.changed_bytes)} changed {hs(self.send_seconds)}, "
                f"fixed {hs(self.fixed_seconds)}")


@dataclass
class CaptureEstimate:
    mode: str
    target: str | None
    link: LinkEstimate | None
    link_rate: float | None      # bytes/s the estimate uses for the link (measured or from the table)
    link_rate_source: str
    disks: list[DiskEstimate]
    total_seconds: float
    finish_time: str             # local wall clock, ISO 8601
    bottleneck: str              # "limited by USB 2.0 link (~25 MB/s)"
    calibrated: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    workers: int = 2
    made_at: str = ""
    alternatives: list[Alternative] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Why the figure cannot be trusted here (empty: it can); the summary's predicted-vs-actual says it.
    caveat: str = ""
    # The disks' sums, kept in the document for its readers (computed, whatever a document says).
    total_size: int = 0
    bytes_to_send: int = 0
    # A warm capture of these disks found on the server: its cutover, predicted (None: none found).
    cutover: CutoverEstimate | None = None

    def __post_init__(self) -> None:
        self.total_size = sum(d.size for d in self.disks)
        self.bytes_to_send = sum(d.bytes_to_send for d in self.disks)

    @property
    def seconds(self) -> float:
        """total_seconds, under the name the first sampler's Estimate used."""
        return self.total_seconds

    def lines(self) -> list[str]:
        out = []
        where = self.target or "no target given"
        out.append(f"estimate for {len(self.disks)} disk(s), {hb(self.total_size)}, mode {self.mode}, to {where}")
        for d in self.disks:
            out.append(f"  {d.path}: {hb(d.size)}, ~{100 * d.nonzero_fraction:.0f}% non-zero, data compresses "
                       f"to ~{100 * d.compress_ratio:.0f}%: read {hb(d.bytes_to_read)}, send ~{hb(d.bytes_to_send)}"
                       f" -> {hs(d.seconds)} ({stage_text(d.bottleneck)})")
        if self.link is not None:
            how = "measured" if self.calibrated and self.link_rate else "assumed"
            rate = f", {how} ~{self.link_rate / MB:.0f} MB/s" if self.link_rate else ""
            out.append(f"  link: {self.link.label}{rate} ({self.link_rate_source})")
        out.append(f"downtime: ~{hs(self.total_seconds)} ({human_minutes(self.total_seconds)}), "
                   f"{self.bottleneck}; done around {self.finish_time[11:16]}")
        if self.cutover is not None:
            out.append(self.cutover.line())
            out.append(f"  (changed bytes predicted from {self.cutover.basis})")
        if not self.calibrated:
            out.append("  (not calibrated: rates from the table in docs/estimate.md)")
        if self.alternatives:
            out.append("  the same capture over: " + "; ".join(
                f"{a.label} ~{hs(a.seconds)}" for a in self.alternatives))
        out.extend("  note: " + n for n in self.notes)
        return out


STAGE_TEXT = {"read": "reading the source", "cpu": "hashing and compression (CPU)",
              "shared": "this machine's CPUs (the receiver runs here too)",
              "link": "the link to the target", "write": "the target's disk",
              "server": "the server verifying and converting"}


def stage_text(key: str) -> str:
    return "limited by " + STAGE_TEXT.get(key, key)
