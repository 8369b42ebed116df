"""The readiness report's new facts on recorded source trees: boot loader, firmware,
resume=, the initramfs's virtio drivers (from its real cpio file list), the typed
round trip through the manifest, and the Glance properties derived from it."""

import gzip
import json
import lzma
import shutil
from pathlib import Path

import pytest
import zstandard

from agent.source.discover.model import Disk, Partition, PartitionTable
from agent import records
from agent.errors import ColdcloneError
from agent.guestos import boot
from agent.guestos.model import BootLoader, Firmware
from agent.guestos.report import ReadinessReport, from_source
from agent.guestos.tree import inspect_tree
from agent.choices import DiskFormat, VmdkAdapter
from agent.server.publish.images import SourceImage, image_properties
from agent.manifest import ImageRole, PublishedImage, PublishRecord
from agent.manifest import Manifest
from agent.server.receive.manifest import CaptureDirectory, ManifestError
from tests.testbed.sourceos import KVER, TREE, cpio_newc, sata_initramfs

TREES = Path(__file__).resolve().parents[1] / "fixtures" / "sourceos"


@pytest.fixture
def debian(tmp_path):
    """The Debian 12 tree of tests/testbed/sourceos.py as plain files."""
    root = tmp_path / "root"
    for rel, text in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / f"boot/initrd.img-{KVER}").write_bytes(sata_initramfs())
    return root


def test_debian_tree_facts(debian):
    src = inspect_tree(str(debian))
    assert (src.boot_loader, src.boot_loader_evidence) == (BootLoader.GRUB2, ["/boot/grub/grub.cfg"])
    assert src.firmware is Firmware.UEFI   # fstab mounts an ESP on /boot/efi
    assert src.firmware_evidence == ["/etc/fstab:3: UUID=7E3A-1B2C /boot/efi vfat"]
    assert src.resume == ["/dev/sda3"]
    assert src.initramfs.present == ["virtio_net"]
    assert src.initramfs.missing == ["virtio_pci", "virtio_blk", "virtio_scsi"]
    assert src.qemu_guest_agent
    res = src.finding("resume-device")
    assert res.severity == "high" and res.conversion.startswith("rewrite resume=")
    assert sorted(res.evidence) == ["/boot/grub/grub.cfg: resume=/dev/sda3",
                                    "/etc/initramfs-tools/conf.d/resume: resume=/dev/sda3"]
    ini = src.finding("initramfs-virtio")
    assert ini.evidence == [f"/boot/initrd.img-{KVER}: present virtio_net; missing "
                            "virtio_pci, virtio_blk, virtio_scsi"]


def test_initramfs_with_virtio_built_in_or_as_modules_has_no_finding(debian):
    # modules.builtin: the kernel has virtio_pci and virtio_blk compiled in
    (debian / f"lib/modules/{KVER}").mkdir(parents=True)
    (debian / f"lib/modules/{KVER}/modules.builtin").write_text(
        "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n")
    src = inspect_tree(str(debian))
    assert src.initramfs.present == ["virtio_pci", "virtio_blk", "virtio_net"]
    assert src.finding("initramfs-virtio") is None


@pytest.mark.parametrize("pack", [gzip.compress, lzma.compress,
                                  lambda b: zstandard.ZstdCompressor().compress(b)])
def test_initramfs_names_through_every_compression(tmp_path, pack):
    main = cpio_newc({"lib/modules/x/virtio_blk.ko.xz": b"m", "init": b"#!/bin/sh\n"})
    early = cpio_newc({"kernel/x86/microcode/AuthenticAMD.bin": b"u"})
    path = tmp_path / "initrd"
    path.write_bytes(early + b"\0" * 512 + pack(main))
    names = boot.initramfs_names(str(path))
    assert "kernel/x86/microcode/AuthenticAMD.bin" in names
    assert "lib/modules/x/virtio_blk.ko.xz" in names


def test_damaged_or_empty_initramfs_is_said_not_guessed(debian):
    (debian / f"boot/initrd.img-{KVER}").write_bytes(b"\x00\x01garbage" * 10)
    src = inspect_tree(str(debian))
    assert src.initramfs.error and "could not list" in src.initramfs.error
    assert src.finding("initramfs-virtio") is None   # Debian: no release-based guess either
    (debian / f"boot/initrd.img-{KVER}").write_bytes(b"")
    assert "holds no files" in inspect_tree(str(debian)).initramfs.error


def test_rhel6_tree_grub_legacy_and_release_guess(tmp_path):
    src = inspect_tree(str(TREES / "rhel6-cciss" / "root"),
                       boot_root=str(TREES / "rhel6-cciss" / "boot"))
    assert src.boot_loader is BootLoader.GRUB_LEGACY
    # the recorded initramfs is an empty placeholder: the RHEL <= 7 rule still applies
    assert src.initramfs.error and src.finding("initramfs-virtio") is not None


def _disk(table, parts):
    return Disk(name="sda", dev_path="/dev/sda", kernel_name="sda", kind="disk", transport="sata",
                size=1 << 30, partition_table=PartitionTable(type=table, partitions=parts))


def _part(n, type_id=None, flags=()):
    return Partition(number=n, dev_path=f"/dev/sda{n}", start=n << 20, size=1 << 20,
                     type="normal", type_id=type_id, flags=list(flags))


def test_firmware_from_the_partition_table():
    esp = _part(1, boot.ESP_GUID)
    uefi = boot.firmware_from_disk(_disk("gpt", [esp, _part(2)]))
    assert (uefi.firmware, uefi.evidence) == (Firmware.UEFI, [
        "/dev/sda: gpt partition 1 is an EFI system partition"])
    assert boot.firmware_from_disk(_disk("gpt", [_part(1, flags=["bios_grub"]), _part(2)])) \
        .firmware is Firmware.BIOS
    assert boot.firmware_from_disk(_disk("msdos", [_part(1, "0x83")])).firmware is Firmware.BIOS
    assert boot.firmware_from_disk(_disk("gpt", [_part(1)])).firmware is Firmware.UNKNOWN
    hybrid = boot.firmware_from_disk(_disk("gpt", [esp, _part(2, boot.BIOS_BOOT_GUID)]))
    assert hybrid.firmware is Firmware.UNKNOWN and hybrid.hybrid
    # a hybrid disk: the OS's fstab decides (no /boot/efi: grub-pc, BIOS)
    none = boot.FirmwareVerdict(Firmware.UNKNOWN)
    assert boot.decide_firmware(none, hybrid).firmware is Firmware.BIOS
    assert boot.decide_firmware(boot.FirmwareVerdict(Firmware.UEFI, ["fstab"]), hybrid) \
        .firmware is Firmware.UEFI
    assert boot.decide_firmware(none, none).firmware is Firmware.UNKNOWN


def test_report_round_trips_through_the_manifest(debian):
    rep = from_source(inspect_tree(str(debian)), "sda")
    data = json.loads(records.dumps(rep))
    assert "source" not in data and data["firmware"] == "uefi" and data["boot_loader"] == "grub2"
    back = records.decode(data, ReadinessReport, "readiness")
    assert back == rep
    assert back.findings[0].conversion == rep.findings[0].conversion


def test_malformed_report_names_the_field(debian):
    data = records.encode(from_source(inspect_tree(str(debian)), "sda"))
    data["firmware"] = "coreboot"
    with pytest.raises(ColdcloneError, match=r"readiness: Invalid enum value 'coreboot' - at \$\.firmware"):
        records.decode(data, ReadinessReport, "readiness")
    data["firmware"] = "bios"
    data["findings"][0]["severity"] = 3
    with pytest.raises(ColdcloneError, match=r"readiness: Expected str, got int - at \$\.findings\[0\]\.severity"):
        records.decode(data, ReadinessReport, "readiness")


def test_summary_lines(debian):
    lines = from_source(inspect_tree(str(debian)), "sda").summary()
    assert lines[0] == ("readiness: Debian GNU/Linux 12 (bookworm) on sda; firmware uefi, "
                        "boot loader grub2, cloud-init no")
    assert "readiness: root /dev/sda2 (sd), resume=/dev/sda3" in lines
    assert any(l.startswith("readiness: [medium] no-cloud-init: no automatic fix:") for l in lines)
    assert ReadinessReport(error="sda: mount failed").summary() == [
        "readiness: no source OS found on the captured disks (sda: mount failed)"]


def _capture(tmp_path, readiness, status="complete"):
    cap = tmp_path / "cap1"
    cap.mkdir()
    (cap / "sda.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 100)
    doc = {"capture_id": "cap1", "status": status, "readiness": readiness,
           "disks": [{"name": "sda", "image": "sda.qcow2", "format": "qcow2", "size": 3 << 30,
                      "digest": "ab" * 32, "digest_algo": "sha256-blocks",
                      "verified": {"record_digests": True, "disk_digest": True, "readback_digest": True,
                                   "qemu_img_check": True}}]}
    (cap / "manifest.json").write_text(json.dumps(doc))
    return cap


def _local(cap, vsize=3 << 30, role=ImageRole.BOOT):
    return SourceImage(disk=cap.manifest.disks[0], role=role, position=0, path=cap.file("sda.qcow2"),
                       kind="verified", format="qcow2", virtual_size=vsize, md5="m", backing=False)


def test_properties_from_the_manifest(tmp_path, debian):
    rep = from_source(inspect_tree(str(debian)), "sda")
    cap = CaptureDirectory.load(str(_capture(tmp_path, records.encode(rep))), purpose="published")
    props = image_properties(cap, _local(cap), DiskFormat.QCOW2, None)
    ours = {"coldclone_capture_id": "cap1", "coldclone_digest": "sha256-blocks:" + "ab" * 32,
            "coldclone_image_file": "sda.qcow2", "coldclone_disk": "sda", "coldclone_role": "boot",
            "coldclone_position": "0", "coldclone_source_md5": "m"}
    os_props = {"os_type": "linux", "os_distro": "debian", "os_version": "12",
                "hw_qemu_guest_agent": "yes", "hw_firmware_type": "uefi", "hw_machine_type": "q35"}
    assert props == {"hw_disk_bus": "virtio", "hw_vif_model": "virtio", **ours, **os_props}
    # VMware: the driver's names for the controller and the NIC, on every adapter
    for adapter, bus in ((VmdkAdapter.IDE, {"hw_disk_bus": "ide"}),
                         (VmdkAdapter.LSI_LOGIC, {"hw_disk_bus": "scsi", "hw_scsi_model": "lsilogic"}),
                         (VmdkAdapter.LSI_LOGIC_SAS, {"hw_disk_bus": "scsi", "hw_scsi_model": "lsisas1068"}),
                         (VmdkAdapter.PARAVIRTUAL, {"hw_disk_bus": "scsi", "hw_scsi_model": "vmpvscsi"})):
        assert image_properties(cap, _local(cap), DiskFormat.VMDK, adapter) == {
            "vmware_disktype": "sparse", "vmware_adaptertype": adapter.value, "hw_vif_model": "e1000",
            **bus, **ours, **os_props}
    # a data disk carries no OS facts
    data = image_properties(cap, _local(cap, role=ImageRole.DATA), DiskFormat.RAW, None)
    assert data == {"hw_disk_bus": "virtio", "hw_vif_model": "virtio", **ours, "coldclone_role": "data"}


def test_bios_source_and_no_readiness(tmp_path):
    src = inspect_tree(str(TREES / "rocky9-nm"))
    src.firmware = Firmware.BIOS
    cap = CaptureDirectory.load(str(_capture(tmp_path, records.encode(from_source(src, "sda")))), purpose="published")
    props = image_properties(cap, _local(cap), DiskFormat.QCOW2, None)
    assert (props["os_distro"], props["os_version"], props["hw_qemu_guest_agent"]) == ("rocky", "9.3", "no")
    assert "hw_firmware_type" not in props and "hw_machine_type" not in props
    shutil.rmtree(tmp_path / "cap1")
    cap = CaptureDirectory.load(str(_capture(tmp_path, None)), purpose="published")
    props = image_properties(cap, _local(cap), DiskFormat.QCOW2, None)
    assert "os_type" not in props and props["hw_disk_bus"] == "virtio"


def test_incomplete_or_damaged_captures_are_refused(tmp_path):
    with pytest.raises(ManifestError, match="no such directory"):
        CaptureDirectory.load(str(tmp_path / "nope"), purpose="published")
    (tmp_path / "x.partial").mkdir()
    with pytest.raises(ManifestError, match="never completed"):
        CaptureDirectory.load(str(tmp_path / "x.partial"), purpose="published")
    cap = _capture(tmp_path, None, status="receiving")
    with pytest.raises(ManifestError, match="not 'complete'"):
        CaptureDirectory.load(str(cap), purpose="published")
    (cap / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be read as JSON"):
        CaptureDirectory.load(str(cap), purpose="published")


def test_publish_section_written_atomically_and_read_back(tmp_path):
    cap = CaptureDirectory.load(str(_capture(tmp_path, None)), purpose="published")
    rec = PublishRecord(cloud="c", disk_format="qcow2", published="2026-11-29T00:00:00Z", images=[
        PublishedImage(disk="sda", image_id="i", disk_format="qcow2", role=ImageRole.BOOT, position=0,
                       image_name="n", image_file="sda.qcow2", image_kind="verified", checksum="m",
                       os_hash_algo="sha512", os_hash_value="s", size=104, properties={"a": "b"})])
    cap.write_section("publish", rec)
    doc = json.loads((tmp_path / "cap1" / "manifest.json").read_text())
    assert doc["capture_id"] == "cap1" and PublishRecord.from_document(doc) == rec
    assert Manifest.load(doc).capture_id == "cap1"
    assert doc["publish"]["images"][0]["role"] == "boot" and doc["publish"]["plan"] is None
    assert sorted(p.name for p in (tmp_path / "cap1").iterdir()) == ["manifest.json", "sda.qcow2"]
    assert PublishRecord.from_document({**doc, "publish": "yes"}) is None
    assert PublishRecord.from_document({**doc, "publish": {"images": [{"role": "x"}]}}) is None


def test_a_publish_section_of_one_image_is_still_read():
    """Manifests published before every disk was: one image, its fields at the top."""
    old = {"cloud": "dc2", "image_id": "5b1e", "image_name": "srv-sda-kvm", "image_file": "sda.kvm.qcow2",
           "image_kind": "converted", "disk": "sda", "checksum": "9e10", "os_hash_algo": "sha512",
           "os_hash_value": "00", "size": 1 << 30, "published": "2026-11-23T15:10:00Z", "reused": False,
           "properties": {"disk_format": "qcow2", "hw_disk_bus": "virtio"}, "seconds": 3.5}
    rec = PublishRecord.from_document({"capture_id": "srv", "status": "complete", "disks": [], "publish": old})
    assert (rec.cloud, rec.disk_format, rec.plan, rec.seconds) == ("dc2", "qcow2", None, 3.5)
    assert rec.boot == PublishedImage(
        disk="sda", image_id="5b1e", disk_format="qcow2", role=ImageRole.BOOT, position=0,
        image_name="srv-sda-kvm", image_file="sda.kvm.qcow2", image_kind="converted", checksum="9e10",
        os_hash_algo="sha512", os_hash_value="00", size=1 << 30, properties=old["properties"])
    assert rec.data == []
