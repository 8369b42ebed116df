"""Publishing a verified (or converted) capture to OpenStack Glance through openstacksdk.

The image gets the properties Nova needs to boot it as a KVM virtio guest (derived from
the manifest's readiness report), plus the capture id and the verified digest, by which
a second run finds the image the first one made instead of uploading another.
After the upload Glance must say `active`, and its checksum (md5) and os_hash_value
must equal the local file's: that is the proof the cloud holds the bytes we verified.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

from ...errors import ConnectionError_, ServerError, UsageError
from ...guestos.model import Firmware
from ..receive import image as qimage
from ..receive.manifest import CaptureDirectory, ManifestDisk
from ..receive.store import converted_image_name
from ...manifest import PublishRecord

log = logging.getLogger("coldclone.publish")

GIB = 1 << 30
# Property names of our own (Glance allows any key; the prefix keeps them apart).
P_CAPTURE = "coldclone_capture_id"
P_DIGEST = "coldclone_digest"
P_FILE = "coldclone_image_file"

# os-release ID -> the os_distro value Glance's metadata definitions (os-info's family names) use.
OS_DISTRO = {
    "debian": "debian", "ubuntu": "ubuntu", "rhel": "rhel", "redhat": "rhel", "centos": "centos",
    "fedora": "fedora", "rocky": "rocky", "almalinux": "almalinux", "ol": "ol",
    "sles": "sles", "sled": "sled", "opensuse": "opensuse", "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse", "arch": "arch", "gentoo": "gentoo",
    "freebsd": "freebsd", "amzn": "amzn", "scientific": "scientific",
}


@dataclass
class LocalImage:
    path: str
    kind: str          # converted / verified
    disk_format: str   # qcow2 / raw
    virtual_size: int
    size: int
    md5: str
    sha512: str

    def hash(self, algo: str) -> str:
        if algo == "sha512":
            return self.sha512
        h = hashlib.new(algo)
        with open(self.path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()


def pick_image(cap: CaptureDirectory, disk: ManifestDisk) -> LocalImage:
    """The converted `<disk>.kvm.qcow2` when conversion made one, else the verified image."""
    converted = cap.file(converted_image_name(disk.name))
    if os.path.isfile(converted):
        path, kind, fmt = converted, "converted", "qcow2"
    else:
        path, kind, fmt = cap.file(disk.image), "verified", disk.format
        if not os.path.isfile(path):
            raise UsageError(f"{path}: the manifest names this image but it is not there; "
                             f"the capture directory is incomplete")
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            md5.update(chunk)
            sha.update(chunk)
    vsize = int(qimage.info(path).get("virtual-size") or disk.size)
    return LocalImage(path=path, kind=kind, disk_format=fmt, virtual_size=vsize,
                      size=os.path.getsize(path), md5=md5.hexdigest(), sha512=sha.hexdigest())


def image_properties(cap: CaptureDirectory, disk: ManifestDisk, local: LocalImage) -> dict[str, str]:
    """Glance properties for the image, from the manifest; every value a string, as Glance
    stores them."""
    props = {
        "hw_disk_bus": "virtio",
        "hw_vif_model": "virtio",
        P_CAPTURE: cap.manifest.capture_id,
        P_DIGEST: f"{disk.digest_algo}:{disk.digest}" if disk.digest_algo else disk.digest,
        P_FILE: os.path.basename(local.path),
    }
    ready = cap.readiness
    if ready is not None and ready.os_name:
        props["os_type"] = "linux"
        os_id = ((ready.os.id if ready.os else None) or "").lower()
        if os_id:
            props["os_distro"] = OS_DISTRO.get(os_id, os_id)
        if ready.os and ready.os.version_id:
            props["os_version"] = ready.os.version_id
        props["hw_qemu_guest_agent"] = "yes" if ready.qemu_guest_agent else "no"
        if ready.firmware is Firmware.UEFI:
            # OVMF needs the q35 machine type for secure boot and for its NVRAM layout.
            props["hw_firmware_type"] = "uefi"
            props["hw_machine_type"] = "q35"
    return props


def _glance_said(e: Exception) -> str:
    """What Glance answered, in one line (status and its message)."""
    status = getattr(e, "status_code", None)
    details = getattr(e, "details", None) or ""
    text = str(e).strip().replace("\n", " ")
    if details and details not in text:
        text = f"{text}: {details}"
    return f"HTTP {status}: {text}" if status else text


def connect(cloud: str):
    try:
        import openstack
        import openstack.config
        import openstack.exceptions as oe
    except ImportError as e:
        raise UsageError(f"openstacksdk is not installed ({e}); install the server extra: "
                         f"pip install 'coldclone[server]'") from None
    try:
        return openstack.connect(cloud=cloud)
    except oe.ConfigException as e:
        files = ", ".join(openstack.config.loader.CONFIG_FILES)
        raise UsageError(f"--cloud {cloud}: {e}; define it in a clouds.yaml (searched {files}, "
                         f"or OS_CLIENT_CONFIG_FILE)") from None


def _find_existing(conn, props: dict[str, str]) -> list:
    query = {k: props[k] for k in (P_CAPTURE, P_DIGEST, P_FILE)}
    return [i for i in conn.image.images(**query)
            if all((i.properties or {}).get(k, getattr(i, k, None)) == v for k, v in query.items())]


def publish(capture_dir: str, cloud: str, *, say: Callable[[str], None] = lambda s: None,
            wait_seconds: float = 3600, conn=None) -> PublishRecord:
    """Upload the capture's boot disk to Glance (or find the image an earlier run made),
    check it, and record it in the manifest's `publish` section."""
    import keystoneauth1.exceptions as ksa
    import openstack.exceptions as oe

    t0 = time.monotonic()
    cap = CaptureDirectory.load(capture_dir, purpose="published")
    disk = cap.boot_disk()
    if len(cap.manifest.disks) > 1:
        say(f"publishing the boot disk {disk.name} only; the other disks "
            f"({', '.join(d.name for d in cap.manifest.disks if d is not disk)}) become Cinder volumes")
    local = pick_image(cap, disk)
    if local.kind == "converted":
        say(f"image: {local.path} (converted for KVM)")
    else:
        say(f"image: {local.path} (the verified capture as captured: no converted "
            f"<disk>.kvm.qcow2 beside it; run coldclone-convert first for a virtio-ready guest)")
    props = image_properties(cap, disk, local)
    min_disk = max(1, math.ceil(local.virtual_size / GIB))
    name = f"{cap.manifest.capture_id}-{disk.name}" + ("-kvm" if local.kind == "converted" else "")
    conn = conn or connect(cloud)
    try:
        existing = _find_existing(conn, props)
        reused = None
        for img in existing:
            if img.status == "active" and img.checksum == local.md5:
                reused = img
            else:
                # A run that died half way left a queued/saving/killed record: it holds no
                # usable data, and leaving it would make the next lookup ambiguous.
                say(f"removing image {img.id} left {img.status} by an earlier run")
                conn.image.delete_image(img, ignore_missing=True)
        if reused is not None:
            say(f"already published as image {reused.id}: nothing uploaded")
            img = reused
        else:
            say(f"uploading {local.size} bytes to {cloud} as {name} ...")
            try:
                img = conn.image.create_image(
                    name=name, filename=local.path, disk_format=local.disk_format,
                    container_format="bare", min_disk=min_disk, allow_duplicates=True,
                    validate_checksum=False, wait=True, timeout=wait_seconds, **props)
            except oe.SDKException as e:
                _remove_failed(conn, props, say)
                raise ServerError(f"Glance refused the upload of {local.path}: {_glance_said(e)}; "
                                  f"the local image is untouched", code="glance") from None
        img = conn.image.get_image(img.id)
    except oe.HttpException as e:
        raise ServerError(f"Glance ({cloud}) answered {_glance_said(e)}; nothing was recorded, "
                          f"the local image is untouched", code="glance") from None
    except (oe.SDKException, ksa.ClientException) as e:
        # keystoneauth's own errors: no endpoint answered (version discovery, connect refused)
        raise ConnectionError_(f"cannot talk to Glance ({cloud}): {e}; check the endpoint in "
                               f"clouds.yaml and that the image service runs") from None
    _check(img, local, cloud)
    rec = PublishRecord(
        cloud=cloud, image_id=img.id, image_name=img.name, image_file=os.path.basename(local.path),
        image_kind=local.kind, disk=disk.name, checksum=img.checksum,
        os_hash_algo=img.hash_algo or "", os_hash_value=img.hash_value or "", size=img.size,
        published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), reused=reused is not None,
        properties={**props, "disk_format": local.disk_format, "container_format": "bare",
                    "min_disk": str(min_disk)},
        seconds=round(time.monotonic() - t0, 3))
    cap.write_section("publish", rec)
    say(f"published: image {rec.image_id} on {cloud} (active, checksum {rec.checksum} matches)")
    return rec


def _remove_failed(conn, props: dict[str, str], say) -> None:
    try:
        for img in _find_existing(conn, props):
            if img.status != "active":
                say(f"removing the half-made image {img.id} ({img.status})")
                conn.image.delete_image(img, ignore_missing=True)
    except Exception as e:  # the refusal is the news; a failed clean-up only gets a line
        log.warning("could not remove the half-made image: %s", e)


def _check(img, local: LocalImage, cloud: str) -> None:
    """Glance holds exactly our bytes, and will serve them."""
    if img.status != "active":
        raise ServerError(f"Glance ({cloud}) left image {img.id} in status {img.status!r}, not "
                          f"'active'; the local image is untouched", code="glance")
    if img.checksum != local.md5:
        raise ServerError(f"Glance ({cloud}) image {img.id} has checksum {img.checksum}, the local "
                          f"file {local.md5}: the upload is damaged; delete the image and publish "
                          f"again", code="glance")
    if img.hash_algo and img.hash_value and img.hash_value != local.hash(img.hash_algo):
        raise ServerError(f"Glance ({cloud}) image {img.id}: os_hash_value ({img.hash_algo}) "
                          f"differs from the local file's: the upload is damaged; delete the "
                          f"image and publish again", code="glance")

