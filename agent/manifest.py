"""manifest.json, typed: what the receiver writes when a capture completes, and what the
agent (in the COMPLETE reply), coldclone-convert and coldclone-publish read back.

The sections written after the capture are kept as their JSON in `Manifest` and decoded by
their models: `readiness` (guestos.report.ReadinessReport.from_dict), `conversion`
(server.convert.model), `publish` (PublishRecord, below: both programs read it, the agent's
summary names the images). The source's machine (CPUs, memory) that discovery records in
`source.inventory.machine` is SourceMachine, below (discovery writes it, publish's flavor
suggestion reads it). Loading a capture directory and rewriting it: agent.server.receive.manifest.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass, field

from . import protocol as P

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

    def to_dict(self) -> dict:
        return {"record_digests": self.record_digests, "disk_digest": self.disk_digest,
                "readback_digest": self.readback_digest, "qemu_img_compare": self.qemu_img_compare}


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
        ranges = []
        for i, r in enumerate(f.objects("ranges")):
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
        disks_raw = f.objects("disks")
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


@dataclass(frozen=True)
class SourceMachine:
    """The captured server's processors and memory, as discovery found them on it."""

    cpus: int                 # logical CPUs online
    memory_bytes: int         # installed memory (online memory blocks; else the kernel's MemTotal)

    def to_dict(self) -> dict:
        return {"cpus": self.cpus, "memory_bytes": self.memory_bytes}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "SourceMachine":
        f = P.JsonFields(obj, what)
        return cls(cpus=f.int("cpus", lo=1, required=True), memory_bytes=f.int("memory_bytes", lo=1, required=True))

    @classmethod
    def of(cls, manifest: "Manifest") -> "SourceMachine | None":
        """`source.inventory.machine` of a manifest; None when the agent recorded none (an
        older agent) or the inventory is not an object."""
        inventory = manifest.source.get("inventory")
        machine = inventory.get("machine") if isinstance(inventory, dict) else None
        if not isinstance(machine, dict):
            return None
        return cls.from_dict(machine, f"{MANIFEST}: source.inventory.machine")


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

    def to_dict(self) -> dict:
        return {"disk": self.disk, "image_id": self.image_id, "disk_format": self.disk_format,
                "role": self.role.value, "position": self.position, "image_name": self.image_name,
                "image_file": self.image_file, "image_kind": self.image_kind, "checksum": self.checksum,
                "os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value, "size": self.size,
                "virtual_size": self.virtual_size, "method": self.method, "reused": self.reused,
                "properties": dict(self.properties)}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "PublishedImage":
        f = P.JsonFields(obj, what)
        role = f.str("role", required=True)
        if role not in [r.value for r in ImageRole]:
            raise P.ProtocolError(f"{what}: field 'role' must be boot or data, got {role!r:.40}")
        props = f.mapping("properties")
        return cls(disk=f.str("disk", required=True), image_id=f.str("image_id", required=True),
                   disk_format=f.str("disk_format", required=True), role=ImageRole(role),
                   position=f.int("position", required=True), image_name=f.str("image_name", default=""),
                   image_file=f.str("image_file", default=""), image_kind=f.str("image_kind", default=""),
                   checksum=f.str("checksum", default=""), os_hash_algo=f.str("os_hash_algo", default=""),
                   os_hash_value=f.str("os_hash_value", default=""), size=f.int("size", default=0),
                   virtual_size=f.int("virtual_size", default=0), method=f.str("method", default=""),
                   reused=f.bool("reused"), properties={str(k): str(v) for k, v in props.items()})


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

    def to_dict(self) -> dict:
        return {"argv": list(self.argv), "sets": self.sets, "until": self.until, "why": self.why,
                "optional": self.optional}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "PlanStep":
        f = P.JsonFields(obj, what)
        return cls(argv=f.str_list("argv"), sets=f.str("sets"), until=f.str("until"), why=f.str("why", default=""),
                   optional=f.bool("optional"))


@dataclass(frozen=True)
class FlavorSuggestion:
    vcpus: int
    ram_mib: int
    disk_gib: int
    basis: str                       # what the numbers follow (the source inventory, or why not)

    def to_dict(self) -> dict:
        return {"vcpus": self.vcpus, "ram_mib": self.ram_mib, "disk_gib": self.disk_gib, "basis": self.basis}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "FlavorSuggestion":
        f = P.JsonFields(obj, what)
        return cls(vcpus=f.int("vcpus", required=True), ram_mib=f.int("ram_mib", required=True),
                   disk_gib=f.int("disk_gib", required=True), basis=f.str("basis", default=""))


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

    def to_dict(self) -> dict:
        return {"addresses": self.addresses.value, "bindings_removed": list(self.bindings_removed),
                "bindings_left": list(self.bindings_left), "static_configs": list(self.static_configs),
                "summary": self.summary}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "NetworkPolicy":
        f = P.JsonFields(obj, what)
        addresses = f.str("addresses", default=AddressPolicy.UNKNOWN.value)
        if addresses not in [a.value for a in AddressPolicy]:
            raise P.ProtocolError(f"{what}: field 'addresses' must be dhcp, fixed or unknown")
        return cls(addresses=AddressPolicy(addresses), bindings_removed=f.str_list("bindings_removed"),
                   bindings_left=f.str_list("bindings_left"), static_configs=f.str_list("static_configs"),
                   summary=f.str("summary", default=""))


@dataclass(frozen=True)
class LaunchPlan:
    """How to start the published server: its images in order, a flavor, the network, and the
    `openstack` commands that make the data volumes and the server with everything attached."""

    flavor: FlavorSuggestion
    network: NetworkPolicy
    steps: tuple[PlanStep, ...]
    variables: dict[str, str] = field(default_factory=dict)   # what the operator sets first

    def script(self) -> str:
        """The plan as a sh script an operator can read and run: what to set first, then each
        step under a comment saying why. Text from the guest (its file names) only ever lands in
        comments, with control characters replaced, so it cannot become a command."""
        lines = ["#!/bin/sh", "set -e"]
        for name, why in self.variables.items():
            lines.append(f"# ${name}: {_comment(why)}")
            lines.append(f': "${{{name}:?set {name} first (see above)}}"')
        known = frozenset(self.variables) | {s.sets for s in self.steps if s.sets}
        for step in self.steps:
            if step.why:
                lines.append(f"# {_comment(step.why)}")
            lines.append(("# " if step.optional else "") + step.shell(known))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {"flavor": self.flavor.to_dict(), "network": self.network.to_dict(),
                "steps": [s.to_dict() for s in self.steps], "variables": dict(self.variables)}

    @classmethod
    def from_dict(cls, obj: dict, what: str) -> "LaunchPlan":
        f = P.JsonFields(obj, what)
        return cls(flavor=FlavorSuggestion.from_dict(f.mapping("flavor"), what + ".flavor"),
                   network=NetworkPolicy.from_dict(f.mapping("network"), what + ".network"),
                   steps=tuple(PlanStep.from_dict(x, f"{what}.steps[{i}]") for i, x in enumerate(f.objects("steps"))),
                   variables={str(k): str(v) for k, v in f.mapping("variables").items()})


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

    @property
    def boot(self) -> PublishedImage | None:
        return next((i for i in self.images if i.role is ImageRole.BOOT), None)

    @property
    def data(self) -> list[PublishedImage]:
        return sorted((i for i in self.images if i.role is ImageRole.DATA), key=lambda i: i.position)

    def to_dict(self) -> dict:
        return {"cloud": self.cloud, "disk_format": self.disk_format, "adapter": self.adapter,
                "images": [i.to_dict() for i in self.images],
                "plan": self.plan.to_dict() if self.plan is not None else None,
                "published": self.published, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, obj: dict, what: str = "publish") -> "PublishRecord":
        """Typed; a section written before every disk was published (one image, no plan) is
        read as that one boot image."""
        f = P.JsonFields(obj, what)
        if not f.present("images") and f.present("image_id"):
            props = f.mapping("properties")
            image = PublishedImage(
                disk=f.str("disk", default=""), image_id=f.str("image_id", required=True),
                disk_format=str(props.get("disk_format", "qcow2")), role=ImageRole.BOOT, position=0,
                image_name=f.str("image_name", default=""), image_file=f.str("image_file", default=""),
                image_kind=f.str("image_kind", default=""), checksum=f.str("checksum", default=""),
                os_hash_algo=f.str("os_hash_algo", default=""), os_hash_value=f.str("os_hash_value", default=""),
                size=f.int("size", default=0), reused=f.bool("reused"),
                properties={str(k): str(v) for k, v in props.items()})
            return cls(cloud=f.str("cloud", default=""), disk_format=image.disk_format, images=[image],
                       published=f.str("published", default=""), seconds=f.float("seconds", default=0.0))
        return cls(cloud=f.str("cloud", required=True), disk_format=f.str("disk_format", required=True),
                   images=[PublishedImage.from_dict(x, f"{what}.images[{i}]") for i, x in enumerate(f.objects("images"))],
                   plan=LaunchPlan.from_dict(f.mapping("plan"), what + ".plan") if f.present("plan") else None,
                   adapter=f.str("adapter"), published=f.str("published", default=""),
                   seconds=f.float("seconds", default=0.0))

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "PublishRecord | None":
        """The manifest's `publish` section, when the capture was published (front ends say
        the images); a section of another shape is ignored, not guessed at."""
        data = manifest.section("publish")
        if data is None:
            return None
        try:
            return cls.from_dict(data)
        except P.ProtocolError:
            return None
