"""Discovery inside the guest kernel, asserted from the agent's JSON inventory (serial console
and the manifest's source.inventory), on the shared boots of conftest.py:

all on the UEFI boot (one boot for every scenario):
- a logical drive behind QEMU's megasas-gen2 (LSI MegaRAID SAS) controller is a
  hardware-RAID logical drive with driver megaraid_sas; usb-storage disks on EHCI and xHCI
  report link speeds 480 and 5000; all of them are captured and equal their images;
- an md RAID1 created in the guest by a coldclone.pre hook (delivered by fw_cfg) from two
  virtio disks is reported with its members in slot order, and captured as both member
  disks, each equal to its image.
"""
from __future__ import annotations

import os

import pytest

from . import guest
from .conftest import Capture

pytestmark = [pytest.mark.vm, pytest.mark.root]


def _inventory(cap: Capture) -> dict:
    return cap.inventory


def _assert_member_captured(cap: Capture, serial: str, untouched: bool = True) -> None:
    assert cap.run.console.ok, cap.run.explain()
    name = cap.guest_name(serial)
    d = guest.manifest_disk(cap.manifest(), name)
    src = cap.disks[serial]
    # md members: the image as the guest left it (the pre hook wrote the array onto it)
    guest.qemu_img_compare(src.image, os.path.join(cap.cap_dir, d["image"]))
    if untouched:
        assert guest.sha256_of(src.image) == src.sha256, f"{src.image} changed during the run"


def test_megasas_logical_drive_is_hardware_raid(uefi_capture):
    inv = _inventory(uefi_capture)
    disk = guest.inventory_disk_by_serial(inv, "cc-raid-ld")
    ctrl = guest.controller_of(inv, disk)
    assert disk["kind"] == "raid-logical-drive", disk
    assert ctrl and ctrl["driver"] == "megaraid_sas" and ctrl["kind"] == "hardware-raid", ctrl
    assert disk["capture_default"], disk.get("exclude_reason")
    _assert_member_captured(uefi_capture, "cc-raid-ld")
    print(f"\n  {disk['name']}: {disk['kind']} behind {ctrl['driver']} ({ctrl['pci_id']}), captured and equal")


@pytest.mark.parametrize("serial,speed,label", [("cc-usb2", 480, "USB 2.0"), ("cc-usb3", 5000, "USB 3.0")])
def test_usb_disk_link_speed(uefi_capture, serial, speed, label):
    inv = _inventory(uefi_capture)
    disk = guest.inventory_disk_by_serial(inv, serial)
    assert disk["transport"] == "usb", disk
    assert disk["link"] and disk["link"]["kind"] == "usb", disk
    assert disk["link"]["speed_mbps"] == speed, disk["link"]
    assert label in disk["link"]["label"], disk["link"]
    _assert_member_captured(uefi_capture, serial)
    print(f"\n  {disk['name']}: {disk['link']['label']} ({speed} Mb/s), captured and equal")


def test_md_raid1_members_in_order_and_captured_as_members(uefi_capture):
    cap = uefi_capture
    assert "running the pre hook" in cap.run.console.text, cap.run.explain()
    inv = _inventory(cap)
    arrays = [a for a in inv["raid_arrays"] if a["level"] == "raid1"]
    assert len(arrays) == 1, f"expected the one RAID1 the pre hook made: {inv['raid_arrays']}"
    md = arrays[0]
    a, b = cap.guest_name("cc-md-a"), cap.guest_name("cc-md-b")
    members = [(m["slot"], m["disk"] or m["device"]) for m in md["members"]]
    assert members == [(0, a), (1, b)], f"members of {md['name']}: {md['members']}"
    assert md["raid_disks"] == 2 and md["degraded"] == 0, md
    # captured as its member disks, not as the md device
    m = cap.manifest()
    names = [d["name"] for d in m["disks"]]
    assert a in names and b in names, names
    assert md["name"] not in names, f"the array {md['name']} itself was captured: {names}"
    for serial in ("cc-md-a", "cc-md-b"):
        _assert_member_captured(cap, serial, untouched=False)
    print(f"\n  {md['name']} ({md['level']}, metadata {md['metadata_version']}): members "
          f"{[n for _, n in members]} captured as disks, both equal their images")
