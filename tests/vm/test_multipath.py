"""One LUN reached through two SCSI HBAs is one disk, captured once.

A QEMU guest sees one disk image behind two virtio-scsi controllers (scsi-hd, the same serial
and WWN, no dm-multipath map: the live system runs no multipathd), boots the ISO headless with
coldclone.disks=all, and must list one disk with two paths in the manifest's inventory and
capture exactly one image of it, equal to the source (qemu-img compare), the source untouched.
Its own BIOS boot (about a minute under TCG), from the ISO written to a USB stick (SeaBIOS ->
isohybrid MBR -> isolinux): that boot path is proven by this capture's boot, and the stick, the
live medium, must never be offered as a source.
"""
from __future__ import annotations

import os

import pytest

from . import guest
from .conftest import Capture, _capture_boot, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

SERIAL = "cc-mp-lun"
WWN = "0x5000c50015ea71ac"


@pytest.fixture(scope="module")
def multipath_capture(vm_workdir, vm_server) -> Capture:
    _skip_unless_ready("bios-usb")
    lun = guest.pattern_disk(f"{vm_workdir}/mp-lun.img", serial=SERIAL, size_mb=32, bus="two-hbas")
    lun.wwn = WWN
    return _capture_boot("bios-usb", "vm-multipath", [lun], vm_server,
                         extra_cmdline="coldclone.disks=all")


def test_one_lun_through_two_hbas_is_one_disk_captured_once(multipath_capture):
    cap = multipath_capture
    assert cap.run.console.ok, cap.run.explain()
    m = cap.manifest()
    inv = m["source"]["inventory"]
    luns = [d for d in inv["disks"] if d.get("serial") == SERIAL]
    assert len(luns) == 1, f"the LUN is listed {len(luns)} times: {[d['name'] for d in luns]}"
    lun = luns[0]
    assert lun["wwn"] == WWN and lun["capture_default"], lun
    assert len(lun["paths"]) == 2, lun["paths"]
    assert lun["paths"][0]["name"] == lun["name"], "captured through its first path"
    ctrls = [p["controller"] for p in lun["paths"]]
    assert len(set(ctrls)) == 2 and all(guest.controller_of(inv, {"controller": c}) for c in ctrls), ctrls
    assert inv["multipaths"] == [{"wwid": inv["multipaths"][0]["wwid"], "disk": lun["name"], "map": None}]

    # exactly one image, of that disk, equal to the source, the source untouched
    assert [d["name"] for d in m["disks"]] == [lun["name"]], [d["name"] for d in m["disks"]]
    images = sorted(f for f in os.listdir(cap.cap_dir) if f.endswith((".qcow2", ".raw", ".img")))
    assert images == [m["disks"][0]["image"]], images
    src = cap.disks[SERIAL]
    guest.qemu_img_compare(src.image, os.path.join(cap.cap_dir, m["disks"][0]["image"]))
    assert guest.sha256_of(src.image) == src.sha256, f"{src.image} changed during the run"
    print(f"\n  {lun['name']}: paths {', '.join(p['name'] for p in lun['paths'])} via {ctrls}; "
          f"one image {images[0]}, qemu-img compare: identical")


def test_boot_hybrid_usb_stick_bios(multipath_capture):
    """The ISO as a raw USB stick under SeaBIOS (isohybrid MBR), and the stick is not a source."""
    print("\n  " + guest.assert_boot_path(multipath_capture.run, "bios-usb"))
    inv = multipath_capture.manifest()["source"]["inventory"]
    assert [d["name"] for d in inv["disks"] if d.get("capture_default")] == \
        [multipath_capture.guest_name(SERIAL)], inv["disks"]
