"""One disk identity: paths of one LUN are one Disk, Inventory.resolve answers every
"which disk is this name" question, policy outcomes are codes, and the estimate names a
disk as the capture streams it (so the live ETA finds its model)."""

import copy
import json
from pathlib import Path

import pytest

from agent import devnames
from agent.source.capture.source import stream_name
from agent.source.discover import populate, snapshot
from agent.source.discover.model import Disk, Why, to_dict
from agent.source.discover.populate import path_identity
from agent.source.estimate.plan import _per_disk
from agent.source.estimate.progress import EtaEstimator
from tests.unit.plans import one_disk_plan
from agent.source.estimate.sample import ContentSample

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "udev"
GB = 1_000_000_000


def load(machine):
    return snapshot.load(FIXTURES / f"{machine}.json")


def discover(machine, snap=None, **policy):
    return populate.from_snapshot(snap or load(machine), **policy)


# ------------------------------------------------------------ grouping paths

def test_two_hbas_one_lun_no_map_is_one_disk_captured_once():
    inv = discover("multipath_nomap")
    lun = inv.disks[0]
    assert [p.name for p in lun.paths] == ["sda", "sdb"]
    assert [p.controller for p in lun.paths] == ["0000:00:04.0", "0000:00:05.0"]
    assert [d.name for d in inv.capture_set()] == ["sda", "sdc", "sdd", "sde", "sdf"]
    assert "sdb" not in [d.name for d in inv.disks]
    mp, = inv.multipaths
    assert (mp.wwid, mp.disk, mp.map, mp.paths, mp.chosen) == (
        "35000c50015ea71ac", lun, None, ["sda", "sdb"], "sda")


def test_the_manifest_names_the_references():
    data = json.loads(json.dumps(to_dict(discover("multipath_nomap"))))
    assert data["multipaths"] == [{"wwid": "35000c50015ea71ac", "disk": "sda", "map": None}]
    assert [p["name"] for p in data["disks"][0]["paths"]] == ["sda", "sdb"]
    assert "aliases" not in data and "live" not in data
    mp = json.loads(json.dumps(to_dict(discover("multipath"))))
    assert mp["multipaths"][0] == {"wwid": "36006016015301d00a0b1c2d3e4f50611", "disk": "sdb",
                                   "map": "mapper/mpatha"}
    assert mp["disks"][0]["exclude_code"] == "multipath-map"


def test_a_map_with_a_path_the_map_does_not_list_takes_it_in():
    """mpatha lists only sdb (sdc's path came up after the map was built): sdc, with the
    same WWN and size, is still a path of the one disk, not a second capture."""
    snap = load("multipath")
    for dev in snap["block"]:
        if dev["sys_name"] == "dm-0":
            dev["slaves"] = ["sdb"]
    inv = discover(None, snap)
    assert [p.name for p in inv.resolve("sdb").paths] == ["sdb", "sdc"]
    assert inv.resolve("sdc") is inv.resolve("sdb")
    assert inv.multipaths[0].map is inv.resolve("mapper/mpatha")


def _disk(**kw):
    base = dict(name="sdx", dev_path="/dev/sdx", kernel_name="sdx", kind="disk", transport="sas",
                size=10 * GB, model="MODEL", serial=None, wwn=None)
    base.update(kw)
    return Disk(**base)


@pytest.mark.parametrize("kw,grouped", [
    ({"wwn": "0x5000c50015ea71ac"}, True),
    ({"serial": "ZA1B2C3D"}, True),                               # serial + model + size
    ({"serial": "ZA1B2C3D", "model": None}, False),               # serial without a model
    ({"wwn": "0x0000000000000000"}, False),                       # all zeros
    ({"serial": "0000000000000000"}, False),
    ({"serial": "0123456789"}, False),                            # a bridge's placeholder
    ({"serial": "To Be Filled By O.E.M."}, False),
    ({"serial": "   "}, False),
    ({"serial": "ZA1B2C3D", "transport": "usb"}, False),          # USB never groups
    ({"wwn": "0x5000c50015ea71ac", "kind": "md"}, False),         # only disks are paths
    ({"wwn": "0x5000c50015ea71ac", "size": 0}, False),
])
def test_identity_rule(kw, grouped):
    assert (path_identity(_disk(**kw)) is not None) == grouped


def test_the_same_serial_with_another_size_is_another_disk():
    a, b = _disk(serial="ZA1B2C3D"), _disk(serial="ZA1B2C3D", size=20 * GB)
    assert path_identity(a) != path_identity(b)
    a, b = _disk(wwn="0x5000c50015ea71ac"), _disk(wwn="0x5000c50015ea71ac", size=20 * GB)
    assert path_identity(a) != path_identity(b)


# ------------------------------------------------------------ one resolver

@pytest.mark.parametrize("spec", [
    "sda", "/dev/sda", "sdb", "/dev/sdb", "sda1", "/dev/sdb1", "sdb1",
    "/dev/disk/by-id/wwn-0x5000c50015ea71ac", "by-id/scsi-35000c50015ea71ac",
    "/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:0:0", "by-path/pci-0000:00:05.0-scsi-0:0:0:0-part1",
])
def test_every_name_of_the_lun_resolves_to_the_one_disk(spec):
    inv = discover("multipath_nomap")
    assert inv.resolve(spec) is inv.disks[0]


@pytest.mark.parametrize("spec", ["cciss/c0d0", "cciss!c0d0", "cciss-c0d0", "/dev/cciss/c0d0",
                                  "/dev/cciss/c0d0p1", "cciss!c0d0p2",
                                  "/dev/disk/by-id/cciss-3600508b1001030363946334538300100"])
def test_every_spelling_of_a_cciss_name(spec):
    inv = discover("cciss")
    assert inv.resolve(spec).name == "cciss/c0d0"


@pytest.mark.parametrize("spec", ["sdz", "/dev/sdz", "c0d0", "", None, "/mnt/nowhere"])
def test_unknown_names_resolve_to_nothing(spec):
    assert discover("cciss").resolve(spec) is None


def test_choosing_the_other_path_chooses_the_disk():
    inv = discover("multipath_nomap", only=["/dev/sdb"])
    assert [d.name for d in inv.capture_set()] == ["sda"]
    assert {d.exclude_code for d in inv.disks if not d.capture_default} == {Why.NOT_SELECTED}
    assert inv.unknown_selected == []


def test_unknown_selection_is_typed():
    inv = discover("multipath_nomap", only=["sda", "sdz"])
    assert inv.unknown_selected == ["sdz"]
    assert inv.warnings == ["selected disk sdz is not a known disk"]


def test_mounted_read_write_through_the_other_path():
    snap = load("multipath_nomap")
    snap["mounts"] += "/dev/sdb1 /srv/data ext4 rw,relatime 0 0\n"
    inv = discover(None, snap)
    lun = inv.disks[0]
    assert (lun.capture_default, lun.exclude_code, lun.exclude_reason) == (
        False, Why.MOUNTED_RW, "mounted read-write by the running system (/srv/data)")


def test_the_other_path_as_capture_target_excludes_the_disk():
    inv = discover("multipath_nomap", target="/dev/sdb")
    assert (inv.disks[0].exclude_code, inv.warnings) == (Why.CAPTURE_TARGET, [])


def test_policy_codes_beside_the_text():
    inv = discover("nvme")
    assert {d.name: d.exclude_code for d in inv.disks if not d.capture_default} == {
        "loop0": Why.LIVE_SYSTEM, "zram0": Why.RAM}
    assert inv.resolve("loop0").backing_file == "/run/live/medium/live/filesystem.squashfs"
    inv = discover("usb3", target="/mnt/target")
    assert {d.name: d.exclude_code for d in inv.disks if not d.capture_default} == {
        "sdc": Why.CAPTURE_TARGET, "sr0": Why.LIVE_MEDIUM}
    assert Why.LIVE_MEDIUM.part_of_live_system() and not Why.CAPTURE_TARGET.part_of_live_system()


# ------------------------------------------------------------ the disk id, estimate to ETA

def test_disk_id_is_the_stream_name():
    inv = discover("cciss")
    disk = inv.resolve("/dev/cciss/c0d0")
    assert disk.id == "cciss-c0d0" == stream_name(devnames.kernel_name("/dev/cciss/c0d0"))
    assert inv.resolve(disk.id) is disk


def test_the_live_eta_finds_the_estimate_of_a_cciss_disk():
    """The capture streams /dev/cciss/c0d0 as cciss-c0d0; the estimate names it so, and the ETA
    follows the estimate's model for it instead of falling back to the plain rate."""
    size = 10 * GB
    sample = ContentSample(size=size, samples=1, sampled_bytes=1, nonzero_fraction=0.5,
                           compress_ratio=1.0, cpu_per_byte=0.0, sample_seconds=0.0)
    est = _per_disk("/dev/cciss/c0d0", None, sample, read_rate=100e6, read_src="table",
                    link_rate=50e6, readback_rate=1e9, workers=1, image_format="raw", mode="nonzero")
    assert est.name == "cciss-c0d0"
    plan = one_disk_plan(est.path, est.size, est.bytes_to_send, est.stages, name=est.name)
    eta = EtaEstimator(plan)
    stream = stream_name(devnames.kernel_name("/dev/cciss/c0d0"))
    left = eta.update(0.0, stream, 0, size, 0, size, 0)
    assert left == pytest.approx(est.seconds, rel=0.01)      # the model, from the first sample
    unplanned = EtaEstimator(None).update(0.0, stream, 0, size, 0, size, 0)
    assert unplanned is None                                 # without it: nothing yet


def test_inventory_copies_keep_their_references():
    inv = discover("multipath")
    twin = copy.deepcopy(inv)
    assert twin == inv and twin.multipaths[0].disk is twin.disks[2]


def test_the_tui_shows_one_row_and_its_paths():
    from agent.source.tui import text

    inv = discover("multipath_nomap")
    lun = inv.disks[0]
    assert text.disk_row(lun, inv, True) == ("[x]", "sda", "32.0M", "QEMU HARDDISK", "virtio-pci",
                                             "2 paths", "ext4")
    details = text.disk_details(lun, inv, True)
    assert "paths: sda, sdb (one disk; captured once, through sda)" in details
    assert all(len(line) <= 78 for line in details), details
