"""Predicates, helpers, fallbacks and the capture policy."""

import copy
from pathlib import Path

import pytest

from agent.source.discover import helpers, populate, rules, snapshot
from agent.source.discover.model import Disk, Link, to_dict
from agent.source.discover.mounts import is_on_nfs, live_medium_source, mount_of, parse_mounts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "udev"
MACHINES = sorted(p.stem for p in FIXTURES.glob("*.json"))
KERNEL_KEYS = {"DEVNAME", "DEVPATH", "DEVTYPE", "SUBSYSTEM", "MAJOR", "MINOR", "PARTN",
               "DISKSEQ"}


def load(machine):
    return snapshot.load(FIXTURES / f"{machine}.json")


def without_udev(snap):
    """The same machine as a live system without udevd sees it: uevent keys only."""
    snap = copy.deepcopy(snap)
    for dev in snap["block"]:
        dev["properties"] = {k: v for k, v in dev["properties"].items() if k in KERNEL_KEYS}
        dev["devlinks"] = []
    return snap


def members(inv, arr):
    """(slot, device, disk name, state) of each member; its disk is the inventory's own Disk."""
    for m in arr.members:
        assert m.disk is None or any(m.disk is d for d in inv.disks), m
    return [(m.slot, m.device, m.disk.name if m.disk else None, m.state) for m in arr.members]


def luns(inv, session):
    """LUN -> disk name; each LUN is the inventory's own Disk."""
    assert all(any(d is x for x in inv.disks) for d in session.luns.values())
    return {lun: d.name for lun, d in session.luns.items()}


def facts(inv):
    return [(d.name, d.kernel_name, d.kind, d.transport, d.size, d.controller, d.link,
             d.capture_default, d.exclude_reason) for d in inv.disks]


@pytest.mark.parametrize("machine", MACHINES)
def test_without_udev_database_the_same_devices_and_decisions(machine):
    snap = load(machine)
    with_db = populate.from_snapshot(snap, target="/mnt/target")
    bare = populate.from_snapshot(without_udev(snap), target="/mnt/target")
    assert facts(bare) == facts(with_db)
    assert bare.controllers == with_db.controllers
    assert [(m.paths, m.chosen) for m in bare.multipaths] == [
        (m.paths, m.chosen) for m in with_db.multipaths]
    assert [(a.name, a.level, members(bare, a), a.missing_slots) for a in bare.raid_arrays] == [
        (a.name, a.level, members(with_db, a), a.missing_slots) for a in with_db.raid_arrays]
    assert [(s.target, s.portal, luns(bare, s)) for s in bare.iscsi_sessions] == [
        (s.target, s.portal, luns(with_db, s)) for s in with_db.iscsi_sessions]


def test_without_udev_partitions_come_from_sysfs():
    inv = populate.from_snapshot(without_udev(load("cciss")))
    table = inv.disk("cciss/c0d0").partition_table
    assert [(p.number, p.dev_path, p.start, p.size) for p in table.partitions] == [
        (1, "/dev/cciss/c0d0p1", 63 * 512, 208782 * 512),
        (2, "/dev/cciss/c0d0p2", 208845 * 512, 286454700 * 512),
    ]
    # no udev, no blkid on a recorded machine: types are unknown, not guessed
    assert table.type == "unknown"
    assert all(p.filesystem is None for p in table.partitions)


def test_without_udev_md_members_come_from_sysfs_slots():
    snap = without_udev(load("md"))
    inv = populate.from_snapshot(snap)
    md1 = next(a for a in inv.raid_arrays if a.name == "md1")
    assert [(m.slot, m.device, m.disk.name) for m in md1.members] == [
        (0, "sdc2", "sdc"), (1, "sda2", "sda"), (2, "sdb2", "sdb")]
    assert all(m.disk is inv.disk(m.disk.name) for m in md1.members)
    assert md1.level == "raid5" and md1.metadata_version == "1.2"


def test_md_member_order_from_udev_roles_when_sysfs_lacks_slots():
    snap = load("md")
    for dev in snap["block"]:
        dev["attrs"] = {k: v for k, v in dev["attrs"].items() if "/dev-" not in k}
    inv = populate.from_snapshot(snap)
    md1 = next(a for a in inv.raid_arrays if a.name == "md1")
    assert [(m.slot, m.device, m.disk.name) for m in md1.members] == [
        (0, "sdc2", "sdc"), (1, "sda2", "sda"), (2, "sdb2", "sdb")]
    assert all(m.disk is inv.disk(m.disk.name) for m in md1.members)


def test_md_member_order_from_mdadm_when_nothing_else_knows():
    class MdadmProbes(populate.NoProbes):
        def mdadm_detail(self, dev_path):
            if dev_path != "/dev/md1":
                return None
            return {"MD_LEVEL": "raid5", "MD_DEVICES": "3", "MD_UUID": "x",
                    "MD_DEVICE_dev_sdb2_ROLE": "2", "MD_DEVICE_dev_sdb2_DEV": "/dev/sdb2",
                    "MD_DEVICE_dev_sdc2_ROLE": "0", "MD_DEVICE_dev_sdc2_DEV": "/dev/sdc2",
                    "MD_DEVICE_dev_sda2_ROLE": "1", "MD_DEVICE_dev_sda2_DEV": "/dev/sda2"}

    snap = without_udev(load("md"))
    for dev in snap["block"]:
        dev["attrs"] = {k: v for k, v in dev["attrs"].items() if "/dev-" not in k}
    inv = populate.Populator(snap, MdadmProbes()).run()
    md1 = next(a for a in inv.raid_arrays if a.name == "md1")
    assert [(m.slot, m.device, m.disk.name) for m in md1.members] == [
        (0, "sdc2", "sdc"), (1, "sda2", "sda"), (2, "sdb2", "sdb")]
    assert all(m.disk is inv.disk(m.disk.name) for m in md1.members)


def test_unknown_device_becomes_a_generic_disk():
    snap = {"block": [{"sys_name": "xyz0", "sys_path": "/sys/devices/weird/xyz0",
                       "devtype": "disk", "devnode": "/dev/xyz0", "properties": {},
                       "attrs": {"size": "2048"}, "parents": []}], "mounts": ""}
    inv = populate.from_snapshot(snap)
    assert inv.disks == [Disk(name="xyz0", dev_path="/dev/xyz0", kernel_name="xyz0",
                              kind="disk", transport="unknown", size=1048576,
                              sys_path="/sys/devices/weird/xyz0")]


def test_floppy_drive_is_listed_but_never_captured():
    # QEMU (and many old servers' BIOS) expose fd0: 4 KiB, I/O errors when read with no disk
    # recognised by name, or by block major 2 (a udev rule may have renamed the node)
    for name in ("fd0", "floppy-a"):
        snap = {"block": [{"sys_name": name, "sys_path": f"/sys/devices/platform/floppy.0/block/{name}",
                           "devtype": "disk", "devnode": f"/dev/{name}",
                           "properties": {"MAJOR": "2", "MINOR": "0", "DEVTYPE": "disk"},
                           "attrs": {"size": "8", "removable": "1"}, "parents": []}],
                "mounts": ""}
        inv = populate.from_snapshot(snap)
        (fd,) = inv.disks
        assert (fd.kind, fd.transport, fd.capture_default, fd.exclude_reason) == (
            "floppy", "floppy", False, "floppy drive"), name
        assert inv.capture_set() == []


def test_a_failing_helper_falls_back_to_a_generic_disk(monkeypatch):
    def boom(self, info, ctx):
        raise KeyError("no such attribute")

    monkeypatch.setattr(helpers.HwRaidLogicalDriveHelper, "build", boom)
    inv = populate.from_snapshot(load("hpsa"))
    sda = inv.disk("sda")
    assert (sda.kind, sda.transport, sda.controller, sda.capture_default) == (
        "disk", "scsi", "0000:03:00.0", True)
    assert any("HwRaidLogicalDriveHelper failed" in w for w in inv.warnings)


def test_garbage_in_a_device_dict_does_not_crash():
    snap = {"block": [{"sys_name": "sdq", "sys_path": "/sys/devices/x/sdq", "devtype": "disk",
                       "properties": {"ID_PATH": None}, "attrs": {"size": "many"},
                       "parents": [{"sys_name": None}, "not a dict"]}], "mounts": ""}
    inv = populate.from_snapshot(snap)
    assert [d.name for d in inv.disks] == ["sdq"]
    assert inv.disks[0].size == 0 and not inv.disks[0].capture_default


def test_helper_priority_order():
    names = [h.__name__ for h in helpers.HELPERS]
    assert names[0] == "MultipathMapHelper" and names[-1] == "GenericDiskHelper"
    assert names.index("HwRaidLogicalDriveHelper") < names.index("ScsiDiskHelper")
    assert names.index("UsbDiskHelper") < names.index("SataHelper")


@pytest.mark.parametrize("driver,channel,level,model,expected", [
    ("megaraid_sas", 2, None, "PERC H730P Mini", True),
    ("megaraid_sas", 0, None, "ST300MM0008", False),      # JBOD pass-through
    ("mpt3sas", 1, None, "Logical Volume", True),
    ("mpt3sas", 0, None, "ST1200MM0088", False),          # IT-mode HBA disk
    ("hpsa", 0, "RAID 5", "LOGICAL VOLUME", True),
    ("hpsa", 0, "N/A", "EG0300FBDBR", False),             # HBA mode
    ("smartpqi", 1, None, "LOGICAL VOLUME", True),
    ("aacraid", 0, None, "Volume0", True),
    ("3w-9xxx", 0, None, "9650SE-8LPML DIS", True),
    ("arcmsr", 0, None, "ARC-1880-VOL#000", True),
    ("ahci", 0, None, "ST2000NM0033", False),
])
def test_hw_raid_logical_drive_per_driver(driver, channel, level, model, expected):
    attrs = {"model": model}
    if level:
        attrs["raid_level"] = level
    info = {"sys_name": "sda", "devtype": "disk", "properties": {}, "attrs": {},
            "parents": [{"sys_name": f"0:{channel}:0:0", "subsystem": "scsi",
                         "devtype": "scsi_device", "attrs": attrs},
                        {"sys_name": "host0", "subsystem": "scsi", "devtype": "scsi_host",
                         "attrs": {"scsi_host/proc_name": driver}}]}
    assert rules.is_hw_raid_logical_drive(info) is expected
    assert rules.controller_kind(driver) == ("ahci" if driver == "ahci" else "hardware-raid")


@pytest.mark.parametrize("mbps,label", [(12, "USB 1.1"), (480, "USB 2.0"), (5000, "USB 3.0"),
                                        (10000, "USB 3.1 Gen 2"), (20000, "USB 3.2 Gen 2x2"),
                                        (None, "USB (unknown speed)")])
def test_usb_speed_labels(mbps, label):
    assert rules.usb_speed_label(mbps) == label


def test_sata_speed():
    assert rules.sata_speed_mbps("6.0 Gbps") == 6000
    assert rules.sata_speed_mbps("1.5 Gbps") == 1500
    assert rules.sata_speed_mbps("<unknown>") is None


def test_dev_path_of_cciss_without_devnode():
    assert rules.dev_path({"sys_name": "cciss!c0d0p1"}) == "/dev/cciss/c0d0p1"
    assert rules.display_name({"sys_name": "cciss!c0d0"}) == "cciss/c0d0"


# --- policy ---------------------------------------------------------------------

def test_unattached_loop_devices_are_not_listed():
    snap = {"block": [{"sys_name": f"loop{i}", "sys_path": f"/sys/devices/virtual/block/loop{i}",
                       "devtype": "disk", "devnode": f"/dev/loop{i}", "properties": {},
                       "attrs": {"size": "0"}, "parents": []} for i in range(8)], "mounts": ""}
    assert populate.from_snapshot(snap, include_loop=True).disks == []


def test_loop_devices_only_with_include_loop():
    snap = {"block": [{"sys_name": "loop3", "sys_path": "/sys/devices/virtual/block/loop3",
                       "devtype": "disk", "devnode": "/dev/loop3",
                       "properties": {"DEVNAME": "/dev/loop3"},
                       "attrs": {"size": "409600", "loop/backing_file": "/srv/src.img"},
                       "parents": []}], "mounts": ""}
    off = populate.from_snapshot(snap).disk("loop3")
    on = populate.from_snapshot(snap, include_loop=True).disk("loop3")
    assert (off.capture_default, off.exclude_reason) == (
        False, "loop device (use --include-loop to offer it)")
    assert (on.capture_default, on.exclude_reason) == (True, None)
    assert on.notes == ["backing file /srv/src.img"]


def test_target_by_device_path_partition_and_by_id():
    for target in ("/dev/sdc", "/dev/sdc1", "sdc",
                   "/dev/disk/by-id/usb-Samsung_Portable_SSD_T5_S49WNP0N120517E-0:0"):
        inv = populate.from_snapshot(load("usb3"), target=target)
        assert inv.disk("sdc").exclude_reason == "capture target", target


def test_unknown_target_is_a_warning():
    inv = populate.from_snapshot(load("usb3"), target="/dev/sdx")
    assert inv.warnings == ["capture target /dev/sdx is not a known disk"]


def test_boot_device_parameter_overrides_mounts():
    inv = populate.from_snapshot(load("hpsa"), boot_device="/dev/sdb")
    assert inv.live_medium == "sdb"
    assert inv.disk("sdb").exclude_reason == "the live system booted from it"
    assert inv.disk("sda").capture_default


def test_capture_set_of_md_machine_has_every_member_disk_once():
    inv = populate.from_snapshot(load("md"))
    assert [d.name for d in inv.capture_set()] == ["sda", "sdb", "sdc", "sdd"]


def test_capture_set_of_multipath_machine():
    inv = populate.from_snapshot(load("multipath"))
    assert [d.name for d in inv.capture_set()] == ["sda", "sdb", "sdd"]


def test_json_shape_round_trips():
    import json

    doc = json.loads(json.dumps(to_dict(populate.from_snapshot(load("iscsi")))))
    assert doc["iscsi_sessions"][0]["luns"] == {"0": "sdb", "1": "sdc"}
    assert doc["disks"][0]["link"] == {"kind": "sata", "name": "ata1", "speed_mbps": 6000,
                                       "label": "SATA 6.0 Gbps"}


# --- mounts -------------------------------------------------------------------------

MOUNTS = """\
overlay / overlay rw,noatime 0 0
/dev/sdc1 /run/live/medium iso9660 ro,noatime 0 0
nas01:/export/images /mnt/nfs nfs4 rw,relatime,vers=4.2 0 0
nas01:/export/old /mnt/nfs/old\\040share nfs rw,relatime,vers=3 0 0
/dev/sdd1 /mnt/usb ext4 rw,relatime 0 0
"""


def test_mounts_and_nfs():
    m = parse_mounts(MOUNTS)
    assert m[3].target == "/mnt/nfs/old share"
    assert is_on_nfs("/mnt/nfs/capture/disk0.img", m)
    assert is_on_nfs("/mnt/nfs/old share/x", m)
    assert not is_on_nfs("/mnt/usb/disk0.img", m)
    assert not is_on_nfs("/mnt/nfsx", m)
    assert mount_of("/mnt/usb", m).source == "/dev/sdd1"
    assert live_medium_source(m) == "/dev/sdc1"


def test_link_of_disk_in_model():
    inv = populate.from_snapshot(load("usb2"))
    assert inv.disk("sdb").link == Link("usb", "2-1", 480, "USB 2.0")
    assert inv.disk("sda").link == Link("sata", "ata1", 3000, "SATA 3.0 Gbps")


def test_selected_disks_md_stands_for_its_members():
    inv = populate.from_snapshot(load("md"), only=["md1"])
    assert [d.name for d in inv.capture_set()] == ["sda", "sdb", "sdc"]
    assert inv.disk("sdd").exclude_reason == "not among the selected disks"


def test_selected_disks_by_path_and_unknown():
    inv = populate.from_snapshot(load("hpsa"), only=["/dev/sdb", "sdz"])
    assert [d.name for d in inv.capture_set()] == ["sdb"]
    assert inv.warnings == ["selected disk sdz is not a known disk"]


def test_cli_from_snapshot(capsys):
    import json

    from agent.source.commands.discover import main

    assert main(["--from-snapshot", str(FIXTURES / "cciss.json")]) == 0
    table = capsys.readouterr().out
    assert "cciss/c0d0" in table and "hardware-raid" in table
    assert max(len(line) for line in table.splitlines()) <= 80
    assert main(["--json", "--from-snapshot", str(FIXTURES / "cciss.json")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["disks"][0]["kernel_name"] == "cciss!c0d0"
    assert main(["--inspect", "--from-snapshot", str(FIXTURES / "cciss.json")]) == 2
    assert main(["--no-such-flag"]) == 2


# A live system's NICs as udevdb.net_devices() returns them, with udevd's database (the live
# ISO's): an e1000 in QEMU's PCI slot 3 (i440fx) and a virtio NIC in slot 7, whose net device
# hangs one level lower, under its virtio device.
NET_WITH_UDEV = [
    {"sys_name": "ens3", "sys_path": "/sys/devices/pci0000:00/0000:00:03.0/net/ens3", "driver": "e1000",
     "properties": {"INTERFACE": "ens3", "SUBSYSTEM": "net", "ID_NET_NAME_MAC": "enx525400123499",
                    "ID_NET_NAME_PATH": "enp0s3", "ID_NET_NAME_SLOT": "ens3", "ID_NET_DRIVER": "e1000",
                    "ID_PATH": "pci-0000:00:03.0"},
     "attrs": {"address": "52:54:00:12:34:99", "speed": "1000", "operstate": "up", "carrier": "1", "type": "1"}},
    {"sys_name": "ens7", "sys_path": "/sys/devices/pci0000:00/0000:00:07.0/virtio1/net/ens7", "driver": "virtio_net",
     "properties": {"INTERFACE": "ens7", "ID_NET_NAME_PATH": "enp0s7", "ID_NET_NAME_SLOT": "ens7"},
     "attrs": {"address": "52:54:00:c0:1d:07", "speed": "-1", "operstate": "down", "carrier": "0", "type": "1"}},
    {"sys_name": "lo", "sys_path": "/sys/devices/virtual/net/lo", "driver": None, "properties": {"INTERFACE": "lo"},
     "attrs": {"address": "00:00:00:00:00:00", "type": "772"}},
]


def test_nic_inventory_pci_slot_link_and_udev_names():
    inv = populate.from_snapshot({"format": snapshot.FORMAT, "block": [], "net": NET_WITH_UDEV, "mounts": ""})
    assert [(n.name, n.mac, n.driver, n.pci_slot, n.speed_mbps, n.operstate, n.carrier, n.udev_names)
            for n in inv.nics] == [
        ("ens3", "52:54:00:12:34:99", "e1000", "0000:00:03.0", 1000, "up", True, ["ens3", "enp0s3", "enx525400123499"]),
        ("ens7", "52:54:00:c0:1d:07", "virtio_net", "0000:00:07.0", None, "down", False, ["ens7", "enp0s7"]),
    ]
    assert to_dict(inv)["nics"][0]["pci_slot"] == "0000:00:03.0"


@pytest.mark.parametrize("path, slot", [
    ("/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.1/net/eno2", "0000:02:00.1"),
    ("/sys/devices/pci0000:00/0000:00:03.0/virtio0/net/eth0", "0000:00:03.0"),
    ("/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/net/enx001122334455", None),
    ("/sys/devices/virtual/net/bond0", None),
])
def test_nic_pci_slot_from_the_sysfs_path(path, slot):
    assert rules.nic_pci_slot(path) == slot
