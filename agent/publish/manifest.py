"""The parts of a capture's manifest.json that publishing reads and writes, typed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from ..errors import ColdcloneError, UsageError
from ..inspect.report import ReadinessReport
from ..receive.store import write_atomic_at

MANIFEST = "manifest.json"


class ManifestError(UsageError):
    """CAPTURE_DIR is not a complete capture (exit 2: the operator named the wrong thing)."""


@dataclass
class CapturedDisk:
    name: str
    image: str              # file name in the capture directory (verified image)
    format: str             # qcow2 / raw
    size: int               # bytes of the source disk
    digest: str             # the verified digest of the source disk
    digest_algo: str


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
    def from_manifest(cls, manifest: dict) -> "PublishRecord | None":
        """The manifest's `publish` section, when the capture was published (front ends say
        the image id); a section of another shape is ignored, not guessed at."""
        data = manifest.get("publish") if isinstance(manifest, dict) else None
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except TypeError:
            return None


@dataclass
class CaptureManifest:
    directory: str
    capture_id: str
    disks: list[CapturedDisk]
    readiness: ReadinessReport | None
    data: dict                       # the whole document, rewritten with our section added

    @classmethod
    def load(cls, directory: str) -> "CaptureManifest":
        path = os.path.join(directory, MANIFEST)
        if not os.path.isdir(directory):
            raise ManifestError(f"{directory}: no such directory; name a capture directory "
                                f"(<receiver root>/<capture id>)")
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            partial = directory.rstrip("/").endswith(".partial")
            raise ManifestError(
                f"{path} does not exist: " + ("this capture never completed (a .partial "
                                              "directory); capture again" if partial else
                                              "not a capture directory, or the capture is still "
                                              "running")) from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path} cannot be read as JSON ({e}); the capture directory "
                                f"is damaged") from None
        if not isinstance(data, dict) or data.get("status") != "complete":
            raise ManifestError(f"{path}: status is {data.get('status') if isinstance(data, dict) else None!r}, "
                                f"not 'complete': only a verified capture can be published")
        disks = []
        for i, d in enumerate(data.get("disks") or []):
            try:
                disks.append(CapturedDisk(name=str(d["name"]), image=str(d["image"]),
                                          format=str(d.get("format", "qcow2")), size=int(d["size"]),
                                          digest=str(d["digest"]),
                                          digest_algo=str(d.get("digest_algo", ""))))
            except (KeyError, TypeError, ValueError) as e:
                raise ManifestError(f"{path}: disks[{i}] lacks {e}; the manifest is damaged") from None
        if not disks:
            raise ManifestError(f"{path}: no disks; nothing to publish")
        readiness = None
        if data.get("readiness") is not None:
            try:
                readiness = ReadinessReport.from_dict(data["readiness"])
            except ColdcloneError as e:
                raise ManifestError(f"{path}: {e}") from None
        return cls(directory=directory, capture_id=str(data.get("capture_id") or ""),
                   disks=disks, readiness=readiness, data=data)

    def boot_disk(self) -> CapturedDisk:
        """The disk the readiness report found the OS on, else the first one."""
        want = self.readiness.disk if self.readiness else None
        return next((d for d in self.disks if d.name == want), self.disks[0])

    def write_section(self, name: str, value: dict) -> None:
        """Add or replace one top-level section, atomically (the rest stays as it was)."""
        self.data[name] = value
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            write_atomic_at(fd, MANIFEST, json.dumps(self.data, indent=2, sort_keys=True).encode()
                            + b"\n")
        finally:
            os.close(fd)
