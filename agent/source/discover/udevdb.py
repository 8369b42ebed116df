"""The one module that touches pyudev.

It turns udev devices into plain dicts (the shape blivet's udev.py works on):
udev properties, the sysfs attributes discovery needs, the device node and
links, and the parent chain with the facts of each parent (driver, PCI ids,
scsi_host proc_name, iSCSI session, FC ports, USB speed, SATA link speed).
Recorded fixtures in tests/fixtures/udev/ have exactly this shape, so
everything past this module runs on data from real machines.

On a live system without udevd the udev database is empty: properties then
hold only the kernel's uevent keys (DEVNAME, DEVTYPE, MAJOR ...), and the
rest of discovery falls back to sysfs attributes and blkid.
"""

from __future__ import annotations

import glob
import logging
import os

log = logging.getLogger("coldclone.discover")

# Attributes of the block device itself, relative to its sysfs directory.
BLOCK_ATTRS = (
    "size", "removable", "ro", "hidden", "partition", "start", "capability",
    "queue/logical_block_size", "queue/physical_block_size", "queue/rotational",
    "device/vendor", "device/model", "device/rev", "device/wwid", "device/serial",
    "device/type", "wwid", "serial", "model",
    "loop/backing_file", "dm/name", "dm/uuid",
)

# Attributes read on every parent when they exist (cheap: missing ones are skipped).
PARENT_ATTRS = (
    # pci
    "vendor", "device", "subsystem_vendor", "subsystem_device", "class",
    # scsi_device / cciss logical drive
    "model", "rev", "type", "wwid", "raid_level", "unique_id", "lunid",
    # usb_device
    "speed", "idVendor", "idProduct", "manufacturer", "product", "serial", "version",
    # nvme controller
    "firmware_rev", "transport", "address",
)

# Class directories hanging under a parent device: (class, attributes).
CLASS_ATTRS = {
    "scsi_host": ("proc_name",),
    "fc_host": ("port_name", "node_name", "speed"),
    "fc_remote_ports": ("port_name", "node_name", "roles"),
    "iscsi_session": ("targetname", "tpgt", "initiatorname"),
    "sas_device": ("sas_address",),
}


def read_attr(base: str, name: str) -> str | None:
    try:
        with open(os.path.join(base, name), "rb") as f:
            data = f.read(4096)
    except OSError:
        # Missing attribute, or one the driver refuses to read (speed of a
        # link that is down gives EINVAL): both mean "unknown".
        return None
    return data.decode("utf-8", "replace").strip()


def _read_many(base: str, names) -> dict[str, str]:
    out = {}
    for name in names:
        value = read_attr(base, name)
        if value is not None:
            out[name] = value
    return out


def _class_attrs(sys_path: str, sys_name: str) -> dict[str, str]:
    out = {}
    for cls, names in CLASS_ATTRS.items():
        cdir = os.path.join(sys_path, cls, sys_name)
        if os.path.isdir(cdir):
            for name, value in _read_many(cdir, names).items():
                out[f"{cls}/{name}"] = value
    # An iSCSI session's portal lives on its connection child device.
    for conn in sorted(glob.glob(os.path.join(sys_path, "connection*"))):
        cdir = os.path.join(conn, "iscsi_connection", os.path.basename(conn))
        for name, value in _read_many(cdir, ("persistent_address", "persistent_port",
                                             "address", "port")).items():
            out[f"iscsi_connection/{name}"] = value
        break
    # libata: the negotiated SATA speed is on the port's link child.
    for link in sorted(glob.glob(os.path.join(sys_path, "link*"))):
        ldir = os.path.join(link, "ata_link", os.path.basename(link))
        for name, value in _read_many(ldir, ("sata_spd", "sata_spd_limit")).items():
            out[f"ata_link/{name}"] = value
        break
    return out


def _md_attrs(sys_path: str) -> dict[str, str]:
    md = os.path.join(sys_path, "md")
    if not os.path.isdir(md):
        return {}
    out = {}
    for name in ("level", "metadata_version", "array_state", "degraded", "raid_disks",
                 "uuid", "sync_action"):
        value = read_attr(md, name)
        if value is not None:
            out[f"md/{name}"] = value
    for member in sorted(glob.glob(os.path.join(md, "dev-*"))):
        base = os.path.basename(member)
        for name in ("slot", "state"):
            value = read_attr(member, name)
            if value is not None:
                out[f"md/{base}/{name}"] = value
    return out


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _parent_info(dev) -> dict:
    return {
        "sys_name": dev.sys_name,
        "sys_path": dev.sys_path,
        "subsystem": dev.subsystem,
        "devtype": dev.device_type,
        "driver": dev.driver,
        "attrs": {**_read_many(dev.sys_path, PARENT_ATTRS),
                  **_class_attrs(dev.sys_path, dev.sys_name)},
    }


def device_info(dev) -> dict:
    """One pyudev Device -> the plain dict the rest of discovery consumes."""
    parents = []
    parent = dev.parent
    while parent is not None:
        try:
            parents.append(_parent_info(parent))
        except Exception as e:  # a vanished or odd parent must not stop discovery
            log.debug("parent of %s unreadable: %s", dev.sys_path, e)
        parent = parent.parent
    props = dict(dev.properties)
    return {
        "sys_name": dev.sys_name,
        "sys_path": dev.sys_path,
        "subsystem": dev.subsystem,
        "devtype": dev.device_type,
        "devnode": dev.device_node,
        "devlinks": sorted(dev.device_links),
        "driver": dev.driver,
        "properties": props,
        "attrs": {**_read_many(dev.sys_path, BLOCK_ATTRS), **_md_attrs(dev.sys_path)},
        "slaves": _listdir(os.path.join(dev.sys_path, "slaves")),
        "holders": _listdir(os.path.join(dev.sys_path, "holders")),
        "parents": parents,
    }


def block_devices() -> list[dict]:
    import pyudev

    ctx = pyudev.Context()
    out = []
    for dev in ctx.list_devices(subsystem="block"):
        try:
            out.append(device_info(dev))
        except Exception as e:
            # A device that disappears mid-scan (a USB stick pulled) is skipped,
            # not fatal: the rest of the inventory is still right.
            log.warning("skipping %s: %s", getattr(dev, "sys_path", dev), e)
    return out


def net_devices() -> list[dict]:
    import pyudev

    ctx = pyudev.Context()
    out = []
    for dev in ctx.list_devices(subsystem="net"):
        parent = dev.parent
        out.append({
            "sys_name": dev.sys_name,
            "sys_path": dev.sys_path,
            "driver": parent.driver if parent is not None else None,
            "properties": dict(dev.properties),
            "attrs": _read_many(dev.sys_path, ("address", "speed", "operstate",
                                               "carrier", "type")),
        })
    return out
