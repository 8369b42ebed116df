"""The local side of publishing: which image of each disk goes to Glance, in which format,
and the Glance properties it carries.

Per disk the converted `<disk>.kvm.qcow2` when the manifest's `conversion` section says the
conversion made it (a file at that name that a failed or older run left is not taken), else
the verified image as captured. The file Glance receives is that image itself when it already
is what the cloud wants (a standalone qcow2 for qcow2), else a copy qemu-img writes in the
run's own directory: raw for a Ceph-backed Glance, a monolithicSparse VMDK for the VMware
driver (never streamOptimized). Glance's own format checks refuse a qcow2 with a backing file,
so an overlay is flattened too.

A warm capture (manifest phase `warm`: syncs read while the source ran, crash-inconsistent) is
published as a TEST: `Launch` puts `-test-sync<N>` on its image names, the tag `coldclone-test`
and `coldclone_phase=warm`, `coldclone_sync=<N>` on its images, so nobody takes it for the
migration; a cutover's images say `coldclone_phase=cutover` (docs/two-phase.md).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

from ...choices import DiskFormat, VmdkAdapter
from ...errors import ServerError, UsageError
from ...records import RecordError
from ...guestos.model import Firmware
from ...manifest import ImageRole, Manifest, ManifestDisk, Phase
from ..convert.model import Conversion, Outcome
from ..receive import image as qimage
from ..receive.manifest import CaptureDirectory

GIB = 1 << 30


DEFAULT_ADAPTER = VmdkAdapter.LSI_LOGIC
# qemu-img writes ide, buslogic, lsilogic or legacyESX into the VMDK's descriptor
# (ddb.adapterType); the SAS and paravirtual SCSI controllers have no word there, so their
# VMDKs say lsilogic (SCSI) and the Glance properties name the controller Nova attaches.
QEMU_ADAPTER = {VmdkAdapter.IDE: "ide", VmdkAdapter.LSI_LOGIC: "lsilogic", VmdkAdapter.LSI_LOGIC_SAS: "lsilogic",
                VmdkAdapter.PARAVIRTUAL: "lsilogic"}
# Nova's VMware driver reads the controller from hw_disk_bus (+ hw_scsi_model) as well as
# from vmware_adaptertype; both say the same.
SCSI_MODEL = {VmdkAdapter.LSI_LOGIC: "lsilogic", VmdkAdapter.LSI_LOGIC_SAS: "lsisas1068",
              VmdkAdapter.PARAVIRTUAL: "vmpvscsi"}

# Property names of our own (Glance allows any key; the prefix keeps them apart).
P_CAPTURE = "coldclone_capture_id"
P_DIGEST = "coldclone_digest"
P_FILE = "coldclone_image_file"
P_DISK = "coldclone_disk"
P_ROLE = "coldclone_role"
P_POSITION = "coldclone_position"
P_SOURCE_MD5 = "coldclone_source_md5"
P_PHASE = "coldclone_phase"          # warm (a test launch) / cutover; absent for a cold capture
P_SYNC = "coldclone_sync"            # warm: how many syncs the image holds
TEST_TAG = "coldclone-test"

# os-release ID -> the os_distro value Glance's metadata definitions (os-info's family names) use.
OS_DISTRO = {
    "debian": "debian", "ubuntu": "ubuntu", "rhel": "rhel", "redhat": "rhel", "centos": "centos",
    "fedora": "fedora", "rocky": "rocky", "almalinux": "almalinux", "ol": "ol",
    "sles": "sles", "sled": "sled", "opensuse": "opensuse", "opensuse-leap": "opensuse",
    "opensuse-tumbleweed": "opensuse", "arch": "arch", "gentoo": "gentoo",
    "freebsd": "freebsd", "amzn": "amzn", "scientific": "scientific",
}


def file_hashes(path: str) -> tuple[str, str, int]:
    """(md5, sha512, size) of a file, read once in 8 MiB pieces."""
    md5, sha, size = hashlib.md5(), hashlib.sha512(), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


@dataclass(frozen=True)
class Launch:
    """What the capture's phase makes of its images: a warm capture's are a test launch of its
    last sync (named, tagged and marked so), a cutover's and a cold capture's the migration."""

    phase: str | None                # Phase.WARM / Phase.CUTOVER; None: a cold capture
    sync: int | None = None          # warm: the number of syncs stored

    @classmethod
    def of(cls, manifest: Manifest) -> "Launch":
        if manifest.warm:
            return cls(Phase.WARM, len(manifest.sync_list))
        return cls(Phase.CUTOVER if manifest.phase == Phase.CUTOVER else None)

    @property
    def test(self) -> bool:
        return self.phase == Phase.WARM

    @property
    def suffix(self) -> str:
        """On the name of everything a test launch makes (images, volumes, the server)."""
        return f"-test-sync{self.sync}" if self.test else ""

    @property
    def tags(self) -> list[str]:
        return [TEST_TAG] if self.test else []

    def properties(self) -> dict[str, str]:
        if self.phase is None:
            return {}
        return {P_PHASE: self.phase, **({P_SYNC: str(self.sync)} if self.test else {})}


@dataclass(frozen=True)
class SourceImage:
    """The local image a disk is published from."""

    disk: ManifestDisk
    role: ImageRole
    position: int
    path: str
    kind: str                 # converted / verified
    format: str               # qcow2 / raw, as the file is
    virtual_size: int
    md5: str                  # of the file, so a re-publish knows it is the same one
    backing: bool             # a qcow2 overlay (it names a backing file)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class UploadFile:
    """The bytes Glance gets for one disk, and what the check after the upload compares."""

    path: str
    disk_format: DiskFormat
    md5: str
    sha512: str
    size: int
    made: bool                # written for this run (in its directory), not the source image


def converted_images(cap: CaptureDirectory) -> dict[str, str]:
    """disk name -> its converted image, as the `conversion` section lists them when the
    conversion succeeded; {} without one (a failed or older run's files are not taken)."""
    try:
        conv = cap.section("conversion", Conversion)
    except RecordError as e:
        raise UsageError(f"{cap.file('manifest.json')}: its conversion section is damaged ({e}); "
                         f"run coldclone-convert again") from None
    if conv is None or conv.result is not Outcome.CONVERTED:
        return {}
    return {i.disk: i.image for i in conv.images}


def source_images(cap: CaptureDirectory) -> list[SourceImage]:
    """Every disk's image to publish, in the capture's order; the boot disk is the one the
    readiness report found the OS on (else the first)."""
    boot = cap.boot_disk()
    converted = converted_images(cap)
    out = []
    for position, disk in enumerate(cap.manifest.disks):
        name = converted.get(disk.name)
        if name is not None:
            path, kind = cap.file(name), "converted"
            if not os.path.isfile(path):
                raise UsageError(f"{path}: the manifest's conversion section names this converted image "
                                 f"but it is not there; run coldclone-convert again")
        else:
            path, kind = cap.file(disk.image), "verified"
            if not os.path.isfile(path):
                raise UsageError(f"{path}: the manifest names this image but it is not there; "
                                 f"the capture directory is incomplete")
        info = qimage.info(path)
        fmt = "qcow2" if kind == "converted" else disk.format
        md5, _, _ = file_hashes(path)
        out.append(SourceImage(disk=disk, role=ImageRole.BOOT if disk is boot else ImageRole.DATA,
                               position=position, path=path, kind=kind, format=fmt,
                               virtual_size=int(info.get("virtual-size") or disk.size), md5=md5,
                               backing=bool(info.get("backing-filename"))))
    return out


def prepare(src: SourceImage, fmt: DiskFormat, adapter: VmdkAdapter | None, work: str) -> UploadFile:
    """The file to upload for this disk in this format: the source image when it already is
    one (a standalone qcow2 for qcow2, a raw for raw), else qemu-img's conversion into `work`."""
    if src.format == fmt.value and not src.backing:
        md5, sha, size = file_hashes(src.path)
        return UploadFile(src.path, fmt, md5, sha, size, made=False)
    out = os.path.join(work, f"{src.position}.{fmt.value}")
    options: list[str] = []
    if fmt is DiskFormat.VMDK:
        # the subformat Glance and Nova's VMware driver take as `sparse`
        options = ["-o", f"subformat=monolithicSparse,adapter_type={QEMU_ADAPTER[adapter or DEFAULT_ADAPTER]}"]
    try:
        qimage.convert(src.path, src.format, out, fmt.value, options)
    except ServerError as e:
        raise ServerError(f"{src.disk.name}: {e}", code=e.code) from None
    md5, sha, size = file_hashes(out)
    return UploadFile(out, fmt, md5, sha, size, made=True)


def image_properties(cap: CaptureDirectory, src: SourceImage, fmt: DiskFormat,
                     adapter: VmdkAdapter | None) -> dict[str, str]:
    """Glance properties for one disk's image, every value a string, as Glance stores them:
    ours (which capture, disk, position, file), the bus and NIC for the hypervisor the format
    is for, and on the boot image what the readiness report knows of the OS."""
    disk = src.disk
    props = {
        P_CAPTURE: cap.manifest.capture_id,
        P_DIGEST: f"{disk.digest_algo}:{disk.digest}" if disk.digest_algo else disk.digest,
        P_FILE: src.name,
        P_DISK: disk.name,
        P_ROLE: src.role.value,
        P_POSITION: str(src.position),
        P_SOURCE_MD5: src.md5,
        **Launch.of(cap.manifest).properties(),
    }
    if fmt is DiskFormat.VMDK:
        adapter = adapter or DEFAULT_ADAPTER
        props.update({"vmware_disktype": "sparse", "vmware_adaptertype": adapter.value,
                      # the VMware driver's default NIC; every guest has a driver for it
                      "hw_vif_model": "e1000"})
        if adapter is VmdkAdapter.IDE:
            props["hw_disk_bus"] = "ide"
        else:
            props.update({"hw_disk_bus": "scsi", "hw_scsi_model": SCSI_MODEL[adapter]})
    else:
        props.update({"hw_disk_bus": "virtio", "hw_vif_model": "virtio"})
    ready = cap.readiness
    if src.role is ImageRole.BOOT and ready is not None and ready.os_name:
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


def min_disk_gib(virtual_size: int) -> int:
    return max(1, math.ceil(virtual_size / GIB))
