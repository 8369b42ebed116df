"""manifest.json, typed: what the receiver writes when a capture completes, and what the
agent (in the COMPLETE reply), coldclone-convert and coldclone-publish read back.

Every part is a model written and read through agent.records (msgspec): the estimate
(estimate_model.CaptureEstimate), the readiness report (guestos.report.ReadinessReport), the
receiver's facts. The sections other tools add after the capture (`conversion`, written by
server.convert.model; `publish`, PublishRecord below: both programs read it, the agent's
summary names the images) stay in the document as written; `PublishRecord.from_document`
reads its section. The source's machine (CPUs, memory) that discovery records in
`source.inventory.machine` is SourceMachine, below (discovery writes it, publish's flavor
suggestion reads it). Loading a capture directory and rewriting it: agent.server.receive.manifest.
"""

from __future__ import annotations

import enum
import re
import shlex
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
    readback_digest: bool = False     # the image read back as stored (a qcow2: as qemu reads it)
    qemu_img_check: bool = False      # the qcow2's metadata consistent (`qemu-img check`)

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
    # Sent as a delta against a warm capture (docs/two-phase.md): what the cold phase cost. Only
    # on the cutover's manifest; a warm sync's disks count in the capture's `syncs`.
    cutover: Cutover | None | Unset = UNSET


@dataclass
class Cutover:
    """A disk's cutover: the cold phase's reading and sending, only what changed since the last
    warm sync crossing the link."""

    bytes_read: int           # source bytes the agent read (the used blocks in mode=used)
    bytes_sent: int           # stream bytes of the disk, framing included
    segments_sent: int        # held-map segments that differed and were sent
    seconds: float            # the disk's wall time, DISK to verified


@dataclass
class Sync:
    """One warm sync of a capture (the source running; crash-inconsistent, a head start)."""

    time: str                 # ISO 8601 when it was stored (the receiver's clock)
    seconds: float            # HELLO to stored
    bytes_read: int           # source bytes the sync read
    bytes_sent: int           # stream bytes, framing included
    segments_changed: int     # held-map segments sent because they differed (all, the first time)
    bytes_changed: int        # the bytes of those segments
    epoch: float = 0.0        # `time` in seconds since the epoch (the change rate's clock)


class Phase:
    """What a capture is: a cold capture (no field), a warm sync's, or a cutover from warm."""

    WARM = "warm"
    CUTOVER = "cutover"


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
    wave: str | None | Unset = UNSET                      # the migration wave (coldclone.wave=)
    # Two-phase migrations (docs/two-phase.md): `warm` while only warm syncs have been stored
    # (its images are a head start, crash-inconsistent: a test launch at most), `cutover` once the
    # cold phase from the ISO made it exact; every sync stays listed.
    phase: str | None | Unset = UNSET
    syncs: list[Sync] | Unset = UNSET
    manifest_version: int = MANIFEST_VERSION

    def disk(self, name: str | None) -> ManifestDisk | None:
        return next((d for d in self.disks if d.name == name), None)

    @property
    def warm(self) -> bool:
        """Only warm syncs stored: a head start, crash-inconsistent, never the migration itself."""
        return self.phase == Phase.WARM

    @property
    def sync_list(self) -> list[Sync]:
        """The warm syncs stored, oldest first ([] for a cold capture)."""
        return list(self.syncs or [])

    @classmethod
    def load(cls, document: Any, what: str = MANIFEST) -> "Manifest":
        """Typed; a field of the wrong type is a RecordError naming it. The sections of other
        tools in the document are not part of the model (publish() reads its own)."""
        return records.decode(document, cls, what)


@dataclass(frozen=True)
class SourceMachine:
    """The captured server's processors and memory, as discovery found them on it."""

    cpus: int                 # logical CPUs online
    memory_bytes: int         # installed memory (online memory blocks; else the kernel's MemTotal)

    @classmethod
    def of(cls, manifest: "Manifest") -> "SourceMachine | None":
        """`source.inventory.machine` of a manifest; None when the agent recorded none (an
        older agent) or the inventory is not an object."""
        inventory = manifest.source.get("inventory")
        machine = inventory.get("machine") if isinstance(inventory, dict) else None
        if not isinstance(machine, dict):
            return None
        return records.decode(machine, cls, f"{MANIFEST}: source.inventory.machine")


# --- the publish section ----------------------------------------------------------------------

class ImageRole(str, enum.Enum):
    BOOT = "boot"          # the disk the OS boots from: the server's root
    DATA = "data"          # every other disk: a Cinder volume made from its image


@dataclass(frozen=True)
class PublishedImage:
    """One disk of the capture as an image in Glance, and the proof it holds our bytes."""

    disk: str
    image_id: str
    disk_format: str                 # qcow2 / raw / vmdk
    role: ImageRole
    position: int                    # the disk's place in the capture (0: first), the attach order
    image_name: str = ""
    image_file: str = ""             # the local image it was made from (sda.kvm.qcow2, sda.qcow2)
    image_kind: str = ""             # converted / verified
    checksum: str = ""               # md5, Glance's `checksum`, equal to the uploaded file's
    os_hash_algo: str = ""
    os_hash_value: str = ""
    size: int = 0                    # bytes Glance holds
    virtual_size: int = 0            # bytes of the disk it holds
    method: str = ""                 # glance-direct / upload: how the bytes went in
    reused: bool = False             # an earlier run's image, found, nothing uploaded
    properties: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()       # as Glance holds them (coldclone-test: a warm capture's test launch)

# A reference to one of a launch plan's shell variables inside a command word.
_PLAN_VAR = re.compile(r"(\$[A-Z_][A-Z0-9_]*)")


def _comment(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


@dataclass(frozen=True)
class PlanStep:
    """One `openstack` command of a launch plan, as its words (what a shell would pass)."""

    argv: tuple[str, ...]
    sets: str | None = None          # shell variable its output (-f value -c id) goes into
    until: str | None = None         # repeated until its output is this (a volume's status)
    why: str = ""
    optional: bool = False           # a suggestion (an admin's step): commented out in the script

    def shell(self, variables: frozenset[str] = frozenset()) -> str:
        """The step as a line of sh. Only the plan's own `variables` expand ($NETWORK, a volume's
        $VOL_SDB); everything else, $ included, is quoted as it is: ids and names come from the
        cloud and the guest, and a plan must not run what they hold."""
        def word(w: str) -> str:
            parts = _PLAN_VAR.split(w)
            return "".join((f'"${{{p[1:]}}}"' if p[1:] in variables else shlex.quote(p)) if i % 2 else
                           (shlex.quote(p) if p else "") for i, p in enumerate(parts)) or "''"

        words = " ".join(word(w) for w in self.argv)
        if self.sets:
            words = f"{self.sets}=$({words})"
        if self.until is not None:
            words = f'until [ "$({words})" = {shlex.quote(self.until)} ]; do sleep 5; done'
        return words

@dataclass(frozen=True)
class FlavorSuggestion:
    vcpus: int
    ram_mib: int
    disk_gib: int
    basis: str                       # what the numbers follow (the source inventory, or why not)

class AddressPolicy(str, enum.Enum):
    DHCP = "dhcp"                    # the guest asks the cloud's DHCP: any port of the network
    FIXED = "fixed"                  # the guest sets its own address: the port must carry it
    UNKNOWN = "unknown"              # no OS inspected: nothing known about its network


@dataclass(frozen=True)
class NetworkPolicy:
    """How the converted guest will take the cloud's NIC, from the conversion and the report."""

    addresses: AddressPolicy
    bindings_removed: tuple[str, ...] = ()   # guest files whose old-MAC bindings conversion removed
    bindings_left: tuple[str, ...] = ()      # old-MAC bindings still there (not converted)
    static_configs: tuple[str, ...] = ()     # guest files that set a fixed address
    summary: str = ""
    # what coldclone-convert --network made of the primary interface (conversion.network):
    # the policy, the name it has on the instance, and the addresses it keeps (keep, static)
    conversion_policy: str | None = None     # dhcp / keep; None: not converted by a mapping run
    interface: str | None = None
    fixed_addresses: tuple[str, ...] = ()

@dataclass(frozen=True)
class LaunchPlan:
    """How to start the published server: its images in order, a flavor, the network, and the
    `openstack` commands that make the data volumes and the server with everything attached."""

    flavor: FlavorSuggestion
    network: NetworkPolicy
    steps: tuple[PlanStep, ...]
    variables: dict[str, str] = field(default_factory=dict)   # what the operator sets first
    # A test launch of a warm capture (the number of syncs its images hold): said first, in
    # the script and wherever the plan is shown; the names of what it makes carry -test-sync<N>.
    test_sync: int | None = None

    @property
    def test_notice(self) -> str:
        if self.test_sync is None:
            return ""
        return (f"TEST LAUNCH of a warm capture (sync {self.test_sync}): a crash-inconsistent copy read "
                f"while the source ran, not the migration; the cutover from the ISO makes the exact images")

    def script(self) -> str:
        """The plan as a sh script an operator can read and run: what to set first, then each
        step under a comment saying why. Text from the guest (its file names) only ever lands in
        comments, with control characters replaced, so it cannot become a command."""
        lines = ["#!/bin/sh"] + ([f"# {self.test_notice}"] if self.test_notice else []) + ["set -e"]
        for name, why in self.variables.items():
            lines.append(f"# ${name}: {_comment(why)}")
            lines.append(f': "${{{name}:?set {name} first (see above)}}"')
        known = frozenset(self.variables) | {s.sets for s in self.steps if s.sets}
        for step in self.steps:
            if step.why:
                lines.append(f"# {_comment(step.why)}")
            lines.append(("# " if step.optional else "") + step.shell(known))
        return "\n".join(lines) + "\n"

@dataclass
class PublishRecord:
    """The manifest's `publish` section: every disk's image in Glance, and the launch plan."""

    cloud: str
    disk_format: str
    images: list[PublishedImage]
    plan: LaunchPlan | None = None
    adapter: str | None = None       # vmdk: the controller (vmware_adaptertype)
    published: str = ""              # ISO 8601 UTC
    seconds: float = 0.0
    # The capture's phase when it was published (Manifest.phase): a `warm` capture's images are a
    # test launch of sync number `sync` (named -test-sync<N>, tagged coldclone-test), never the
    # migration; `cutover`: the cold phase's exact images.
    phase: str | None = None
    sync: int | None = None

    @property
    def test(self) -> bool:
        return self.phase == Phase.WARM

    @property
    def boot(self) -> PublishedImage | None:
        return next((i for i in self.images if i.role is ImageRole.BOOT), None)

    @property
    def data(self) -> list[PublishedImage]:
        return sorted((i for i in self.images if i.role is ImageRole.DATA), key=lambda i: i.position)

    @classmethod
    def from_document(cls, document: Any) -> "PublishRecord | None":
        """A manifest document's `publish` section, when the capture was published (front ends
        say the images); a section of another shape is ignored, not guessed at. A section
        written before every disk was published (one image, no plan) is read as that one
        boot image."""
        data = document.get("publish") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            return None
        try:
            if "images" not in data and "image_id" in data:
                return records.decode(data, _SingleImagePublish, "publish").as_record()
            return records.decode(data, cls, "publish")
        except records.RecordError:
            return None


@dataclass
class _SingleImagePublish:
    """The `publish` section as coldclone wrote it before every disk was published."""

    cloud: str
    image_id: str
    image_name: str = ""
    image_file: str = ""
    image_kind: str = ""
    disk: str = ""
    checksum: str = ""
    os_hash_algo: str = ""
    os_hash_value: str = ""
    size: int = 0
    published: str = ""
    reused: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_record(self) -> PublishRecord:
        fmt = self.properties.get("disk_format", "qcow2")
        image = PublishedImage(
            disk=self.disk, image_id=self.image_id, disk_format=fmt, role=ImageRole.BOOT, position=0,
            image_name=self.image_name, image_file=self.image_file, image_kind=self.image_kind,
            checksum=self.checksum, os_hash_algo=self.os_hash_algo, os_hash_value=self.os_hash_value,
            size=self.size, reused=self.reused, properties=dict(self.properties))
        return PublishRecord(cloud=self.cloud, disk_format=fmt, images=[image], published=self.published,
                             seconds=self.seconds)
