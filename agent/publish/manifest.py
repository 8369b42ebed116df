"""The manifest's `publish` section, typed (the rest of manifest.json: agent.receive.manifest)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..manifest import Manifest


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
