"""A complete capture on the conversion server, loaded (the one loader coldclone-convert and
coldclone-publish use) and rewritten with a tool's own section.

The model of manifest.json is agent.manifest. Later tools add their own top-level section
(`conversion`, `publish`) with write_section(), which rewrites the document as it was read
plus that section, so nothing another version wrote is lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TypeVar

from ... import protocol as P
from ... import records
from ...errors import ColdcloneError, UsageError
from ...guestos.report import ReadinessReport
from ...manifest import MANIFEST, Manifest, ManifestDisk
from .store import write_atomic_at


T = TypeVar("T")


class ManifestError(UsageError):
    """Not a complete, verified capture, or a damaged manifest (exit 2: the operator named
    the wrong thing, or the capture must be taken again)."""


@dataclass
class CaptureDirectory:
    """A complete capture on the conversion server: its directory and its manifest."""

    path: str
    manifest: Manifest
    # manifest.json as read, the sections of later tools included: write_section() keeps it whole
    document: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str, *, purpose: str) -> "CaptureDirectory":
        """The capture in `directory`, refused unless complete, verified and whole.

        purpose: what the caller will do ("converted", "published"), for the messages."""
        directory = directory.rstrip("/") or "/"
        path = os.path.join(directory, MANIFEST)
        if directory.endswith(".partial"):
            raise ManifestError(f"{directory} is an unfinished capture (.partial): it never completed, "
                                f"and only a complete, verified capture can be {purpose}; capture again "
                                f"or let the resume finish it")
        if not os.path.isdir(directory):
            raise ManifestError(f"{directory}: no such directory; name a capture directory "
                                f"(<receiver root>/<capture id>)")
        try:
            with open(path, "rb") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ManifestError(f"{directory} holds no manifest.json ({path} does not exist): not a "
                                f"capture directory, or the "
                                f"capture is still running; give the directory of a complete capture "
                                f"(<receiver root>/<capture id>)") from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path} cannot be read as JSON ({e}); the capture directory is damaged") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} is not a JSON object; the capture directory is damaged")
        if data.get("status") != "complete":
            raise ManifestError(f"{path}: status is {data.get('status')!r}, not 'complete': only a "
                                f"verified capture can be {purpose}")
        try:
            manifest = Manifest.load(data, path)
        except ColdcloneError as e:
            raise ManifestError(f"{path}: {e}; the manifest is damaged") from None
        if not manifest.disks:
            raise ManifestError(f"{path} lists no disks; nothing can be {purpose}")
        for d in manifest.disks:
            if not d.verified.complete:
                raise ManifestError(f"disk {d.name!r} of {directory} is not marked verified in the "
                                    f"manifest; capture it again")
            if d.format not in P.ImageFormat.ALL:
                raise ManifestError(f"disk {d.name!r}: unknown image format {d.format!r}")
            if not os.path.isfile(os.path.join(directory, d.image)):
                raise ManifestError(f"disk {d.name!r}: its image {d.image!r} is missing from {directory}")
        return cls(directory, manifest, data)

    @property
    def readiness(self) -> ReadinessReport | None:
        """The readiness report the agent made before the capture (checked when loaded)."""
        return self.manifest.readiness or None

    def boot_disk(self) -> ManifestDisk:
        """The disk the readiness report found the OS on, else the first one."""
        ready = self.readiness
        return self.manifest.disk(ready.disk if ready else None) or self.manifest.disks[0]

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def section(self, name: str, type_: type[T]) -> T | None:
        """A later tool's top-level section (`conversion`, `publish`) as its model; None when
        the document has none. One of another shape is a RecordError naming the field."""
        data = self.document.get(name)
        return None if data is None else records.decode(data, type_, f"{self.file(MANIFEST)}: {name}")

    def write_section(self, name: str, value) -> None:
        """Add or replace one top-level section, atomically; the rest stays as it was read."""
        self.document[name] = records.encode(value)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            write_atomic_at(fd, MANIFEST, P.dumps(self.document, indent=2, sort_keys=True).encode()
                            + b"\n")
        finally:
            os.close(fd)
