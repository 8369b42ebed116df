"""Publishing every disk of a verified (or converted) capture to OpenStack Glance through
openstacksdk, and the launch plan that starts the server from them.

Each disk becomes one image (agent.server.publish.images: which file, which format, which
properties): the boot disk the bootable image, each data disk an image tagged with the capture
id, its disk name and position. The bytes go in through Glance's interoperable import
(glance-direct: staged, then imported by Glance) where the cloud offers it, else a plain
upload. After each, Glance must say `active`, and its checksum (md5), size and os_hash_value
must equal the uploaded file's: the proof the cloud holds the bytes we sent, in every format.
A second run finds each disk's image the first one made (by capture, disk, source file and its
md5, format, adapter) instead of uploading another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from typing import Callable

from ...choices import DiskFormat, VmdkAdapter
from ...errors import ConnectionError_, ServerError, UsageError
from ...manifest import ImageRole, PublishedImage, PublishRecord
from ...units import human_bytes
from ..receive.manifest import CaptureDirectory
from ..receive.store import free_bytes
from . import images as I
from .cloud import CloudOffer, choose_format, read_offer
from .plan import launch_plan

log = logging.getLogger("coldclone.publish")

# What openstacksdk records on an image it uploads with a known md5 (create_image(md5=...)).
P_UPLOAD_MD5 = "owner_specified.openstack.md5"
WORK_PREFIX, WORK_SUFFIX = "publish-", ".tmp"
WORK_MARGIN = 64 << 20


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


def _key(props: dict[str, str], fmt: DiskFormat) -> dict[str, str]:
    """The properties that say "this disk's image, made from this file, in this format"."""
    keys = (I.P_CAPTURE, I.P_DISK, I.P_FILE, I.P_DIGEST, I.P_SOURCE_MD5)
    out = {k: props[k] for k in keys}
    # a test image of one sync is never found for another sync, nor for the cutover
    out.update({k: props[k] for k in (I.P_PHASE, I.P_SYNC) if k in props})
    if fmt is DiskFormat.VMDK:
        out["vmware_adaptertype"] = props["vmware_adaptertype"]
    return out


def _find_existing(conn, key: dict[str, str], fmt: DiskFormat) -> list:
    return [i for i in conn.image.images(disk_format=fmt.value, **key)
            if i.disk_format == fmt.value and all((i.properties or {}).get(k) == v for k, v in key.items())
            and (i.properties or {}).get(I.P_PHASE) == key.get(I.P_PHASE)]   # a cold capture's: no phase


def _remove_failed(conn, key: dict[str, str], fmt: DiskFormat, say) -> None:
    try:
        for img in _find_existing(conn, key, fmt):
            if img.status != "active":
                say(f"removing the half-made image {img.id} ({img.status})")
                conn.image.delete_image(img, ignore_missing=True)
    except Exception as e:  # the refusal is the news; a failed clean-up only gets a line
        log.warning("could not remove the half-made image: %s", e)


def _wait_active(conn, image_id: str, cloud: str, timeout: float):
    """The image once Glance says `active`; an import Glance gave up on, or a timeout, is an
    error naming what Glance says."""
    deadline = time.monotonic() + timeout
    while True:
        img = conn.image.get_image(image_id)
        if img.status == "active":
            return img
        failed = (img.properties or {}).get("os_glance_failed_import")
        if img.status in ("killed", "deleted") or failed:
            raise ServerError(f"Glance ({cloud}) did not take image {image_id}: status {img.status!r}"
                              + (f", import failed in store(s) {failed}" if failed else "")
                              + "; the local image is untouched", code="glance")
        if time.monotonic() > deadline:
            raise ServerError(f"Glance ({cloud}) left image {image_id} in status {img.status!r} for "
                              f"{timeout:.0f} s (--wait); the local image is untouched", code="glance")
        time.sleep(0.5)


def _check(img, upload: I.UploadFile, cloud: str) -> None:
    """Glance holds exactly our bytes, in the format we sent, and will serve them."""
    if img.status != "active":
        raise ServerError(f"Glance ({cloud}) left image {img.id} in status {img.status!r}, not "
                          f"'active'; the local image is untouched", code="glance")
    if img.disk_format != upload.disk_format.value:
        raise ServerError(f"Glance ({cloud}) turned image {img.id} into {img.disk_format} on import (its "
                          f"image_conversion plugin): its checksum is of that conversion, not of our bytes; "
                          f"publish with --disk-format {img.disk_format}", code="glance")
    if img.checksum != upload.md5 or img.size != upload.size:
        raise ServerError(f"Glance ({cloud}) image {img.id} holds {img.size} bytes with checksum "
                          f"{img.checksum}, the uploaded file {upload.size} bytes with {upload.md5}: the "
                          f"upload is damaged; delete the image and publish again", code="glance")
    if img.hash_algo and img.hash_value:
        local = upload.sha512 if img.hash_algo == "sha512" else _hash(upload.path, img.hash_algo)
        if img.hash_value != local:
            raise ServerError(f"Glance ({cloud}) image {img.id}: os_hash_value ({img.hash_algo}) differs "
                              f"from the uploaded file's: the upload is damaged; delete the image and "
                              f"publish again", code="glance")


def _hash(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _reusable(img) -> bool:
    """An earlier run's image of the same file: active, and holding what that run uploaded."""
    uploaded = (img.properties or {}).get(P_UPLOAD_MD5)
    return img.status == "active" and bool(uploaded) and img.checksum == uploaded


def _check_space(cap: CaptureDirectory, sources: list[I.SourceImage], fmt: DiskFormat) -> None:
    """The copies qemu-img writes (raw or vmdk: about the allocated size of each source) fit."""
    convert = [s for s in sources if s.format != fmt.value or s.backing]
    if not convert:
        return
    needed = WORK_MARGIN + sum(os.stat(s.path).st_blocks * 512 for s in convert)
    free = free_bytes(cap.path)
    if free < needed:
        raise ServerError(f"not enough space in {cap.path} for the {fmt.value} copies to upload: about "
                          f"{human_bytes(needed)} needed, {human_bytes(free)} free; free space there",
                          code="disk_full")


def publish_disk(conn, cap: CaptureDirectory, src: I.SourceImage, fmt: DiskFormat, adapter: VmdkAdapter | None,
                 offer: CloudOffer, work: str, cloud: str, say: Callable[[str], None],
                 wait_seconds: float) -> PublishedImage:
    import openstack.exceptions as oe

    launch = I.Launch.of(cap.manifest)
    props = I.image_properties(cap, src, fmt, adapter)
    key = _key(props, fmt)
    what = f"{src.disk.name} ({src.role.value}, position {src.position})"
    say(f"{what}: {src.path} ({'converted for KVM' if src.kind == 'converted' else 'the verified capture as captured'})"
        + ("" if src.kind == "converted" or src.role is ImageRole.DATA else
           "; no conversion recorded: run coldclone-convert first for a virtio-ready guest"))
    reused = None
    for img in _find_existing(conn, key, fmt):
        if reused is None and _reusable(img):
            reused = img
        else:
            # A run that died half way left a queued/saving/importing/killed record: it holds no
            # usable data, and leaving it would make the next lookup ambiguous.
            say(f"removing image {img.id} left {img.status} by an earlier run")
            conn.image.delete_image(img, ignore_missing=True)
    name = (f"{cap.manifest.capture_id}-{src.disk.name}" + ("-kvm" if src.kind == "converted" else "")
            + launch.suffix)
    min_disk = I.min_disk_gib(src.virtual_size)
    if reused is not None:
        say(f"{what}: already published as image {reused.id}: nothing uploaded")
        img, method = reused, ""
    else:
        upload = I.prepare(src, fmt, adapter, work)
        method = "glance-direct" if offer.glance_direct else "upload"
        say(f"{what}: {'importing' if offer.glance_direct else 'uploading'} {human_bytes(upload.size)} "
            f"({fmt.value}) to {cloud} as {name}"
            + (" (Glance's interoperable import, glance-direct)" if offer.glance_direct else " (plain upload)"))
        try:
            created = conn.image.create_image(
                name=name, filename=upload.path, disk_format=fmt.value, container_format="bare",
                min_disk=min_disk, allow_duplicates=True, validate_checksum=False, md5=upload.md5,
                use_import=offer.glance_direct, tags=launch.tags or None, **props)
            img = _wait_active(conn, created.id, cloud, wait_seconds)
            _check(img, upload, cloud)
        except (oe.SDKException, ServerError) as e:
            _remove_failed(conn, key, fmt, say)
            if isinstance(e, ServerError):
                raise
            raise ServerError(f"Glance refused the upload of {upload.path} ({src.disk.name}): "
                              f"{_glance_said(e)}; the local image is untouched", code="glance") from None
        finally:
            if upload.made:
                os.unlink(upload.path)
    say(f"{what}: image {img.id} (active, {img.size} bytes, checksum {img.checksum} matches)")
    return PublishedImage(
        disk=src.disk.name, image_id=img.id, disk_format=fmt.value, role=src.role, position=src.position,
        image_name=img.name, image_file=src.name, image_kind=src.kind, checksum=img.checksum,
        os_hash_algo=img.hash_algo or "", os_hash_value=img.hash_value or "", size=img.size,
        virtual_size=src.virtual_size, method=method, reused=reused is not None, tags=tuple(img.tags or ()),
        properties={**props, "disk_format": fmt.value, "container_format": "bare", "min_disk": str(min_disk)})


def _last_sync_text(cap: CaptureDirectory) -> str:
    syncs = cap.manifest.sync_list
    return f", the last stored {syncs[-1].time}" if syncs and syncs[-1].time else ""


def publish(capture_dir: str, cloud: str, *, disk_format: DiskFormat | None = None,
            adapter: VmdkAdapter | None = None, say: Callable[[str], None] = lambda s: None,
            wait_seconds: float = 3600, conn=None) -> PublishRecord:
    """Every disk of the capture into Glance (or found there from an earlier run), checked, the
    launch plan made, and all recorded in the manifest's `publish` section."""
    import keystoneauth1.exceptions as ksa
    import openstack.exceptions as oe

    t0 = time.monotonic()
    cap = CaptureDirectory.load(capture_dir, purpose="published")
    if adapter is not None and disk_format not in (None, DiskFormat.VMDK):
        raise UsageError(f"--adapter {adapter.value} is for --disk-format vmdk (the VMware driver's "
                         f"controller), not {disk_format.value}")
    sources = I.source_images(cap)
    launch = I.Launch.of(cap.manifest)
    if launch.test:
        said = _last_sync_text(cap)
        say(f"a WARM capture ({launch.sync} sync{'s' if launch.sync != 1 else ''}{said}): published as a TEST "
            f"launch (names end {launch.suffix}, tag {I.TEST_TAG}); its disks were read while the source ran, "
            f"crash-inconsistent: boot it to try the conversion, never as the migration (cut over from the ISO)")
    conn = conn or connect(cloud)
    work = None
    try:
        offer = read_offer(conn)
        fmt, why = choose_format(disk_format, offer)
        if adapter is not None and fmt is not DiskFormat.VMDK:
            raise UsageError(f"--adapter {adapter.value} is for vmdk, but this cloud gets {fmt.value} ({why})")
        if fmt is DiskFormat.VMDK:
            adapter = adapter or I.DEFAULT_ADAPTER
        say(f"disk format {fmt.value}: {why}" + (f"; adapter {adapter.value}" if adapter else ""))
        _check_space(cap, sources, fmt)
        work = tempfile.mkdtemp(prefix=WORK_PREFIX, suffix=WORK_SUFFIX, dir=cap.path)
        images = [publish_disk(conn, cap, src, fmt, adapter, offer, work, cloud, say, wait_seconds)
                  for src in sources]
    except oe.HttpException as e:
        raise ServerError(f"Glance ({cloud}) answered {_glance_said(e)}; nothing was recorded, "
                          f"the local images are untouched", code="glance") from None
    except (oe.SDKException, ksa.ClientException) as e:
        # keystoneauth's own errors: no endpoint answered (version discovery, connect refused)
        raise ConnectionError_(f"cannot talk to Glance ({cloud}): {e}; check the endpoint in "
                               f"clouds.yaml and that the image service runs") from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    rec = PublishRecord(cloud=cloud, disk_format=fmt.value, adapter=adapter.value if adapter else None,
                        images=images, plan=launch_plan(cap, images),
                        published=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        seconds=round(time.monotonic() - t0, 3), phase=launch.phase, sync=launch.sync)
    cap.write_section("publish", rec)
    return rec
