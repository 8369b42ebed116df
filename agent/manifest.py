"""manifest.json, typed: what the receiver writes when a capture completes, and what the
agent (in the COMPLETE reply), coldclone-convert and coldclone-publish read back.

Every part is a model written and read through agent.records (msgspec): the estimate
(estimate_model.CaptureEstimate), the readiness report (guestos.report.ReadinessReport), the
receiver's facts. The sections other tools add after the capture (`conversion`, written by
server.convert.model; `publish`, PublishRecord below: both programs read it) stay in the
document as written; `Manifest.load` keeps that document, `publish()` reads its section.
Loading a capture directory and rewriting it: agent.server.receive.manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from . import protocol as P
from . import records
from .estimate_model import CaptureEstimate
from .guestos.report import ReadinessReport
from .records import UNSET, Unset

MANIFEST = "manifest.json"      # in the capture directory
MANIFEST_VERSION = 1


@dataclass
class Verified:
    """What was proven about one disk's image before the capture was marked complete."""

    record_digests: bool = False      # every DATA record's digest, as received
    disk_digest: bool = False         # the whole-disk digest, as received
    readback_digest: bool = False     # the raw image read back from the server's disk
    qemu_img_compare: bool = False    # the qcow2 equal to that raw image

    @property
    def complete(self) -> bool:
        return self.disk_digest and self.readback_digest

    def proven(self) -> list[str]:
        """The names of the checks that passed, in the manifest's order."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class UnreadableRange:
    start_sector: int
    sectors: int          # a short last sector (a disk not a whole number of sectors) counts as one
    offset: int           # bytes
    bytes: int


@dataclass
class Unreadable:
    """The sectors of one disk no read could get: zero-filled in the image, and covered by
    every digest as zeros (protocol.py, UNREADABLE). `sectors` and `bytes` are the ranges'
    sums, kept in the document for its readers (computed, whatever a document says)."""

    sector_size: int = 512
    ranges: list[UnreadableRange] = field(default_factory=list)
    sectors: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        self.sectors = sum(r.sectors for r in self.ranges)
        self.bytes = sum(r.bytes for r in self.ranges)


@dataclass
class DiskResume:
    """A disk that did not arrive in one go: where the last attempt started, what earlier
    attempts delivered, and why a held copy was dropped (restarted from 0)."""

    resumed_from: int = 0
    data_bytes_before: int = 0
    restarted: str | None = None
    verified_earlier: bool | Unset = UNSET    # True: verified in an earlier attempt; its source read again


@dataclass
class ManifestDisk:
    name: str
    image: str                        # file name in the capture directory
    format: str                       # qcow2 / raw
    size: int                         # bytes of the source disk
    digest: str                       # the whole-disk digest (hex) of the source
    digest_algo: str = ""
    verified: Verified = field(default_factory=Verified)
    # as the agent's DISK header said them (None: an agent that did not say)
    logical_sector_size: int | None = 512
    physical_sector_size: int | None = 512
    block_size: int = 0
    mode: str | None = ""
    codec: str | None = ""
    image_bytes_allocated: int = 0
    source: dict[str, Any] = field(default_factory=dict)        # the agent's facts about the disk
    received: dict[str, int] = field(default_factory=dict)      # the receiver's counts (bytes, records)
    agent: dict[str, Any] = field(default_factory=dict)         # the agent's counts (END record)
    timings: dict[str, float] = field(default_factory=dict)     # seconds per server step
    unreadable: Unreadable = field(default_factory=Unreadable)
    resume: DiskResume | None | Unset = UNSET    # only for a disk that did not arrive in one go


@dataclass
class ReceiverFacts:
    """Which conversion server wrote the manifest."""

    version: str = ""
    host: str = ""
    python: str = ""
    qemu_img: str = ""


@dataclass
class EstimateVsActual:
    """The agent's prediction next to how long the receiver took, first byte to manifest."""

    predicted_seconds: float
    actual_seconds: float
    ratio: float | None = None


@dataclass
class Manifest:
    capture_id: str
    status: str                       # "complete": the only status a manifest.json is written with
    disks: list[ManifestDisk]
    started: str = ""                 # ISO 8601, the receiver's clock
    finished: str = ""
    receive_seconds: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)     # the agent's facts: hostname, inventory, ...
    agent_version: str = ""
    receiver: ReceiverFacts = field(default_factory=ReceiverFacts)
    protocol: int = P.VERSION
    totals: dict[str, int] = field(default_factory=dict)
    # Absent (or null) when the agent sent none.
    estimate: CaptureEstimate | None | Unset = UNSET         # the agent's estimate, as HELLO carried it
    estimate_vs_actual: EstimateVsActual | None | Unset = UNSET
    readiness: ReadinessReport | None | Unset = UNSET        # the agent's inspection of the source OS
    manifest_version: int = MANIFEST_VERSION

    def disk(self, name: str | None) -> ManifestDisk | None:
        return next((d for d in self.disks if d.name == name), None)

    @classmethod
    def load(cls, document: Any, what: str = MANIFEST) -> "Manifest":
        """Typed; a field of the wrong type is a RecordError naming it. The sections of other
        tools in the document are not part of the model (publish() reads its own)."""
        return records.decode(document, cls, what)


@dataclass
class PublishRecord:
    """The manifest's `publish` section: where the image went and the proof it arrived whole."""

    cloud: str
    image_id: str
    image_name: str
    image_file: str                  # the local file uploaded
    image_kind: str                  # converted / verified
    disk: str
    checksum: str                    # md5, Glance's `checksum`
    os_hash_algo: str
    os_hash_value: str
    size: int
    published: str                   # ISO 8601 UTC
    reused: bool                     # True: an earlier run's image was found, nothing uploaded
    properties: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def from_document(cls, document: Any) -> "PublishRecord | None":
        """A manifest document's `publish` section, when the capture was published (front ends
        say the image id); a section of another shape is ignored, not guessed at."""
        data = document.get("publish") if isinstance(document, dict) else None
        if data is None:
            return None
        try:
            return records.decode(data, cls, "publish")
        except records.RecordError:
            return None
