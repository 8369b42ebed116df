"""manifest.json, typed: what the receiver writes when a capture completes, and what the
agent (in the COMPLETE reply), coldclone-convert and coldclone-publish read back.

The sections written after the capture are kept as their JSON in `Manifest` and decoded by
their models: `readiness` (guestos.report.ReadinessReport.from_dict), `conversion`
(server.convert.model), `publish` (PublishRecord, below: both programs read it, the agent's
summary names the image). Loading a capture directory and rewriting it: agent.server.receive.manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from . import protocol as P

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

    def to_dict(self) -> dict:
        return {"record_digests": self.record_digests, "disk_digest": self.disk_digest,
                "readback_digest": self.readback_digest, "qemu_img_check": self.qemu_img_check}


@dataclass(frozen=True)
class UnreadableRange:
    start_sector: int
    sectors: int          # a short last sector (a disk not a whole number of sectors) counts as one
    offset: int           # bytes
    bytes: int


@dataclass
class Unreadable:
    """The sectors of one disk no read could get: zero-filled in the image, and covered by
    every digest as zeros (protocol.py, UNREADABLE)."""

    sector_size: int = 512
    ranges: list[UnreadableRange] = field(default_factory=list)

    @property
    def sectors(self) -> int:
        return sum(r.sectors for r in self.ranges)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.ranges)

    def to_dict(self) -> dict:
        return {"sector_size": self.sector_size, "sectors": self.sectors, "bytes": self.bytes,
                "ranges": [{"start_sector": r.start_sector, "sectors": r.sectors, "offset": r.offset,
                            "bytes": r.bytes} for r in self.ranges]}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "Unreadable":
        f = P.JsonFields(obj, what)
        raw = obj.get("ranges") or []
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise P.ProtocolError(f"{what}: field 'ranges' must be a list of objects")
        ranges = []
        for i, r in enumerate(raw):
            g = P.JsonFields(r, f"{what}.ranges[{i}]")
            ranges.append(UnreadableRange(*(g.int(k, required=True)
                                            for k in ("start_sector", "sectors", "offset", "bytes"))))
        return cls(sector_size=f.int("sector_size", lo=1, default=512), ranges=ranges)


@dataclass
class DiskResume:
    """A disk that did not arrive in one go: where the last attempt started, what earlier
    attempts delivered, and why a held copy was dropped (restarted from 0)."""

    resumed_from: int
    data_bytes_before: int
    restarted: str | None = None
    verified_earlier: bool = False    # verified in an earlier attempt; its source read again

    def to_dict(self) -> dict:
        out = {"resumed_from": self.resumed_from, "data_bytes_before": self.data_bytes_before,
               "restarted": self.restarted}
        if self.verified_earlier:
            out["verified_earlier"] = True
        return out

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "DiskResume":
        f = P.JsonFields(obj, what)
        return cls(resumed_from=f.int("resumed_from", default=0),
                   data_bytes_before=f.int("data_bytes_before", default=0),
                   restarted=f.str("restarted"), verified_earlier=f.bool("verified_earlier"))


@dataclass
class ManifestDisk:
    name: str
    image: str                        # file name in the capture directory
    format: str                       # qcow2 / raw
    size: int                         # bytes of the source disk
    digest: str                       # the whole-disk digest (hex) of the source
    digest_algo: str
    verified: Verified
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    block_size: int = 0
    mode: str = ""
    codec: str = ""
    image_bytes_allocated: int = 0
    source: dict = field(default_factory=dict)      # the agent's facts about the disk
    received: dict = field(default_factory=dict)    # the receiver's counts (bytes, records)
    agent: dict = field(default_factory=dict)       # the agent's counts (END record)
    timings: dict = field(default_factory=dict)     # seconds per server step
    unreadable: Unreadable = field(default_factory=Unreadable)
    resume: DiskResume | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "image": self.image, "format": self.format, "size": self.size,
                "digest": self.digest, "digest_algo": self.digest_algo, "verified": self.verified.to_dict(),
                "logical_sector_size": self.logical_sector_size,
                "physical_sector_size": self.physical_sector_size, "block_size": self.block_size,
                "mode": self.mode, "codec": self.codec, "image_bytes_allocated": self.image_bytes_allocated,
                "source": self.source, "received": self.received, "agent": self.agent, "timings": self.timings,
                "unreadable": self.unreadable.to_dict(),
                **({"resume": self.resume.to_dict()} if self.resume is not None else {})}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "ManifestDisk":
        f = P.JsonFields(obj, what)
        v = P.JsonFields(f.mapping("verified"), what + ".verified")
        return cls(
            name=f.str("name", required=True), image=f.str("image", required=True),
            format=f.str("format", required=True), size=f.int("size", required=True),
            digest=f.str("digest", required=True), digest_algo=f.str("digest_algo", default=""),
            verified=Verified(**{k: v.bool(k) for k in Verified().to_dict()}),
            logical_sector_size=f.int("logical_sector_size", default=512),
            physical_sector_size=f.int("physical_sector_size", default=512),
            block_size=f.int("block_size", default=0), mode=f.str("mode", default=""),
            codec=f.str("codec", default=""), image_bytes_allocated=f.int("image_bytes_allocated", default=0),
            source=f.mapping("source"), received=f.mapping("received"), agent=f.mapping("agent"),
            timings=f.mapping("timings"),
            unreadable=Unreadable.from_dict(f.mapping("unreadable"), what + ".unreadable"),
            resume=DiskResume.from_dict(f.mapping("resume"), what + ".resume") if f.present("resume") else None)


@dataclass
class Manifest:
    capture_id: str
    status: str                       # "complete": the only status a manifest.json is written with
    disks: list[ManifestDisk]
    started: str = ""                 # ISO 8601, the receiver's clock
    finished: str = ""
    receive_seconds: float = 0.0
    source: dict = field(default_factory=dict)       # the agent's facts: hostname, inventory, ...
    agent_version: str = ""
    receiver: dict = field(default_factory=dict)     # version, host, python, qemu-img
    protocol: int = P.VERSION
    totals: dict = field(default_factory=dict)
    estimate: dict | None = None                     # the agent's estimate, as it sent it
    estimate_vs_actual: dict | None = None
    readiness: dict | None = None                    # guestos.report.ReadinessReport.to_dict()
    manifest_version: int = MANIFEST_VERSION
    # The document as read, sections of other tools (conversion, publish) included.
    document: dict = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = dict(self.document)
        out.update({
            "manifest_version": self.manifest_version, "capture_id": self.capture_id,
            "status": self.status, "started": self.started, "finished": self.finished,
            "receive_seconds": self.receive_seconds, "source": self.source,
            "agent_version": self.agent_version, "receiver": self.receiver, "protocol": self.protocol,
            "disks": [d.to_dict() for d in self.disks], "totals": self.totals,
        })
        if self.estimate is not None:
            out["estimate"] = self.estimate
        if self.estimate_vs_actual is not None:
            out["estimate_vs_actual"] = self.estimate_vs_actual
        if self.readiness is not None:
            out["readiness"] = self.readiness
        return out

    def section(self, name: str) -> dict | None:
        """Another tool's top-level section (`conversion`, `publish`), as it wrote it."""
        value = self.document.get(name)
        return value if isinstance(value, dict) else None

    def disk(self, name: str | None) -> ManifestDisk | None:
        return next((d for d in self.disks if d.name == name), None)

    @classmethod
    def from_dict(cls, obj: dict, what: str = MANIFEST) -> "Manifest":
        """Typed; a field of the wrong type is a ProtocolError naming it."""
        f = P.JsonFields(obj, what)
        disks_raw = obj.get("disks") or []
        if not isinstance(disks_raw, list) or not all(isinstance(d, dict) for d in disks_raw):
            raise P.ProtocolError(f"{what}: field 'disks' must be a list of objects")
        return cls(
            capture_id=f.str("capture_id", required=True), status=f.str("status", required=True),
            disks=[ManifestDisk.from_dict(d, f"{what}: disks[{i}]") for i, d in enumerate(disks_raw)],
            started=f.str("started", default=""), finished=f.str("finished", default=""),
            receive_seconds=f.float("receive_seconds", default=0.0), source=f.mapping("source"),
            agent_version=f.str("agent_version", default=""), receiver=f.mapping("receiver"),
            protocol=f.int("protocol", default=P.VERSION), totals=f.mapping("totals"),
            estimate=f.mapping("estimate") if f.present("estimate") else None,
            estimate_vs_actual=f.mapping("estimate_vs_actual") if f.present("estimate_vs_actual") else None,
            readiness=f.mapping("readiness") if f.present("readiness") else None, manifest_version=f.int("manifest_version", default=MANIFEST_VERSION),
            document=dict(obj))


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "PublishRecord | None":
        """The manifest's `publish` section, when the capture was published (front ends say
        the image id); a section of another shape is ignored, not guessed at."""
        data = manifest.section("publish")
        if data is None:
            return None
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except TypeError:
            return None
