"""Pure tests over the device dicts udevdb produces (blivet's udev.py style).

Every predicate works with a full udev database (ID_* properties) and
without one (live system with no udevd: sysfs attributes and the parent
chain only), because the live ISO may boot before udev has settled or, on
minimal kernels, without udevd at all.
"""

from __future__ import annotations

from ... import devnames

import re

# Controller drivers (PCI driver or scsi_host proc_name) of hardware RAID
# controllers, with what they are usually sold as (for the table).
HW_RAID_DRIVERS = {
    "megaraid_sas": "LSI/Broadcom MegaRAID, Dell PERC",
    "megaraid_mbox": "LSI MegaRAID (old)",
    "megaraid": "LSI MegaRAID (old)",
    "hpsa": "HP Smart Array",
    "cciss": "HP Smart Array (cciss)",
    "smartpqi": "Microchip/HPE Smart Array (pqi)",
    "aacraid": "Adaptec / Dell PERC 2-3",
    "mpt3sas": "LSI/Broadcom SAS (IR volumes)",
    "mpt2sas": "LSI SAS2 (IR volumes)",
    "mpi3mr": "Broadcom Tri-Mode (volumes)",
    "3w-9xxx": "3ware 9000",
    "3w-sas": "3ware SAS",
    "3w-xxxx": "3ware 5000/6000/7000/8000",
    "arcmsr": "Areca",
    "ips": "IBM ServeRAID",
    "gdth": "ICP vortex GDT",
    "hptiop": "HighPoint RocketRAID",
}

HBA_DRIVERS = (
    "lpfc", "qla2xxx", "bfa", "qedf", "fnic", "zfcp",          # FC
    "isci", "pm80xx", "mvsas", "aic94xx", "hisi_sas_v3_hw",    # SAS
    "mptsas", "mptspi", "mptfc", "sym53c8xx", "aic7xxx", "aic79xx", "qla1280",
    "vmw_pvscsi", "hv_storvsc", "megaraid_sas_hba",
)
AHCI_DRIVERS = ("ahci", "ata_piix", "ata_generic", "pata_acpi", "sata_nv", "sata_sil",
                "sata_sil24", "sata_via", "sata_mv", "sata_promise", "pata_atiixp")
USB_DRIVERS = ("xhci_hcd", "ehci-pci", "ehci_hcd", "uhci_hcd", "ohci-pci", "ohci_hcd",
               "usb-storage", "uas")
VIRTIO_DRIVERS = ("virtio-pci", "virtio_pci", "virtio_blk", "virtio_scsi")
ISCSI_DRIVERS = ("iscsi_tcp", "bnx2i", "be2iscsi", "cxgb3i", "cxgb4i", "qla4xxx", "qedi")


def props(info: dict) -> dict:
    return info.get("properties") or {}


def attr(info: dict, name: str) -> str | None:
    return (info.get("attrs") or {}).get(name)


def parents(info: dict) -> list[dict]:
    return info.get("parents") or []


def parent_with(info: dict, subsystem: str | None = None, devtype: str | None = None,
                name_re: str | None = None) -> dict | None:
    for p in parents(info):
        if subsystem is not None and p.get("subsystem") != subsystem:
            continue
        if devtype is not None and p.get("devtype") != devtype:
            continue
        if name_re is not None and not re.fullmatch(name_re, p.get("sys_name") or ""):
            continue
        return p
    return None


def parent_attr(info: dict, name: str) -> str | None:
    """The nearest parent's attribute: the scsi_device's model before the PCI's."""
    for p in parents(info):
        value = (p.get("attrs") or {}).get(name)
        if value not in (None, ""):
            return value
    return None


def int_or(value, default=None):
    try:
        return int(str(value).strip(), 0)
    except (TypeError, ValueError):
        return default


# --- what the device is ---------------------------------------------------

def is_disk(info: dict) -> bool:
    return info.get("devtype") == "disk"


def is_partition(info: dict) -> bool:
    return info.get("devtype") == "partition" or attr(info, "partition") is not None


def is_hidden(info: dict) -> bool:
    # NVMe multipath path devices (nvme0c0n1) are hidden: the head is the disk.
    return attr(info, "hidden") == "1"


def is_md(info: dict) -> bool:
    name = info.get("sys_name", "")
    return name.startswith("md") and (
        attr(info, "md/level") is not None or "MD_LEVEL" in props(info)
        or re.fullmatch(r"md\d+|md_d\d+", name) is not None)


def dm_uuid(info: dict) -> str:
    return props(info).get("DM_UUID") or attr(info, "dm/uuid") or ""


def dm_name(info: dict) -> str | None:
    return props(info).get("DM_NAME") or attr(info, "dm/name")


def is_dm(info: dict) -> bool:
    return info.get("sys_name", "").startswith("dm-") or dm_name(info) is not None


def is_multipath_map(info: dict) -> bool:
    return is_dm(info) and dm_uuid(info).startswith("mpath-")


def is_loop(info: dict) -> bool:
    return info.get("sys_name", "").startswith("loop")


def is_ram(info: dict) -> bool:
    return re.match(r"(ram|zram)\d+", info.get("sys_name", "")) is not None


def is_floppy(info: dict) -> bool:
    # Legacy floppy controllers (QEMU and many old servers' BIOS still show fd0): block major 2.
    return re.match(r"fd\d+$", info.get("sys_name", "")) is not None or props(info).get("MAJOR") == "2"


def is_cdrom(info: dict) -> bool:
    # SCSI peripheral type 5 is CD/DVD; udev says ID_CDROM=1.
    return (re.match(r"sr\d+|scd\d+", info.get("sys_name", "")) is not None
            or props(info).get("ID_CDROM") == "1"
            or attr(info, "device/type") == "5")


def is_cciss(info: dict) -> bool:
    return info.get("sys_name", "").startswith("cciss!") or parent_with(info, "cciss") is not None


def is_nvme(info: dict) -> bool:
    return (info.get("sys_name", "").startswith("nvme")
            or parent_with(info, "nvme") is not None)


def is_virtio(info: dict) -> bool:
    return (re.match(r"vd[a-z]+$", info.get("sys_name", "")) is not None
            or any(p.get("subsystem") == "virtio" for p in parents(info)))


def is_usb(info: dict) -> bool:
    return props(info).get("ID_BUS") == "usb" or parent_with(info, "usb") is not None


def iscsi_session_parent(info: dict) -> dict | None:
    for p in parents(info):
        if "iscsi_session/targetname" in (p.get("attrs") or {}):
            return p
    return parent_with(info, name_re=r"session\d+")


def is_iscsi(info: dict) -> bool:
    return iscsi_session_parent(info) is not None or "-iscsi-" in props(info).get("ID_PATH", "")


def fc_rport_parent(info: dict) -> dict | None:
    return parent_with(info, name_re=r"rport-\d+:\d+-\d+")


def is_fc(info: dict) -> bool:
    return fc_rport_parent(info) is not None or "-fc-" in props(info).get("ID_PATH", "")


def ata_port_parent(info: dict) -> dict | None:
    return parent_with(info, name_re=r"ata\d+")


def is_ata(info: dict) -> bool:
    return props(info).get("ID_BUS") == "ata" or ata_port_parent(info) is not None


def is_sas(info: dict) -> bool:
    return (parent_with(info, name_re=r"end_device-[\d:]+") is not None
            or "-sas-" in props(info).get("ID_PATH", ""))


def scsi_device_parent(info: dict) -> dict | None:
    return parent_with(info, "scsi", "scsi_device") or parent_with(
        info, name_re=r"\d+:\d+:\d+:\d+")


def is_scsi(info: dict) -> bool:
    return scsi_device_parent(info) is not None


def scsi_address(info: dict) -> tuple[int, int, int, int] | None:
    p = scsi_device_parent(info)
    if p is None:
        return None
    try:
        h, c, t, lun = (int(x) for x in p["sys_name"].split(":"))
    except ValueError:
        return None
    return h, c, t, lun


def scsi_host_parent(info: dict) -> dict | None:
    return parent_with(info, "scsi", "scsi_host") or parent_with(info, name_re=r"host\d+")


def pci_parent(info: dict) -> dict | None:
    """The PCI function the device hangs off (the controller), nearest first."""
    return parent_with(info, "pci")


def host_driver(info: dict) -> str | None:
    """The driver that owns the device: scsi_host proc_name first, then the PCI driver.

    proc_name wins because USB and iSCSI hosts say "usb-storage" / "iscsi_tcp"
    where the PCI function above them is only the USB or network controller.
    """
    if is_cciss(info):
        return "cciss"
    host = scsi_host_parent(info)
    if host is not None:
        proc = (host.get("attrs") or {}).get("scsi_host/proc_name")
        if proc:
            return proc
    pci = pci_parent(info)
    if pci is not None and pci.get("driver"):
        return pci["driver"]
    for p in parents(info):
        if p.get("driver"):
            return p["driver"]
    return None


def hw_raid_driver(info: dict) -> str | None:
    drv = host_driver(info)
    if drv in HW_RAID_DRIVERS:
        return drv
    pci = pci_parent(info)
    if pci is not None and pci.get("driver") in HW_RAID_DRIVERS:
        return pci["driver"]
    return None


def is_hw_raid_logical_drive(info: dict) -> bool:
    """A logical drive a RAID controller presents (not a pass-through disk).

    Per driver, because each one puts its volumes somewhere else: megaraid_sas
    on channel 2+ (0-1 are JBOD), mpt2/3sas on channel 1 (RAID_CHANNEL),
    aacraid containers on channel 0, hpsa/smartpqi mark physical pass-through
    with raid_level "N/A".
    """
    drv = hw_raid_driver(info)
    if drv is None:
        return False
    if drv == "cciss":
        return True
    addr = scsi_address(info)
    channel = addr[1] if addr else None
    if drv == "megaraid_sas":
        return channel is None or channel >= 2
    if drv in ("mpt3sas", "mpt2sas"):
        return channel == 1
    if drv == "aacraid":
        return channel in (None, 0)
    if drv in ("hpsa", "smartpqi"):
        level = parent_attr(info, "raid_level")
        model = (props(info).get("ID_MODEL") or parent_attr(info, "model") or "").upper()
        if level is not None:
            return level.upper() != "N/A"
        return "LOGICAL" in model.replace("_", " ")
    return True


def controller_kind(driver: str | None) -> str:
    if driver is None:
        return "unknown"
    if driver in HW_RAID_DRIVERS:
        return "hardware-raid"
    if driver == "nvme":
        return "nvme"
    if driver in AHCI_DRIVERS or driver.startswith("sata_") or driver.startswith("pata_"):
        return "ahci"
    if driver in USB_DRIVERS:
        return "usb"
    if driver in VIRTIO_DRIVERS:
        return "virtio"
    if driver in ISCSI_DRIVERS:
        return "iscsi"
    if driver in HBA_DRIVERS:
        return "hba"
    return "unknown"


def transport_of(info: dict) -> str:
    """The bus the data travels on, most specific first (USB-SATA bridges are usb)."""
    if is_iscsi(info):
        return "iscsi"
    if is_fc(info):
        return "fc"
    if is_usb(info):
        return "usb"
    if is_nvme(info):
        return "nvme"
    if is_virtio(info):
        return "virtio"
    if is_cciss(info) or is_hw_raid_logical_drive(info):
        return "scsi"
    if is_ata(info):
        return "sata"
    if is_sas(info):
        return "sas"
    if is_scsi(info):
        return "scsi"
    return "unknown"


# --- names ------------------------------------------------------------------

def kernel_name(info: dict) -> str:
    return info.get("sys_name", "")


def dev_path(info: dict) -> str | None:
    """/dev node: udev's DEVNAME, else the kernel name with '!' meaning '/'."""
    node = info.get("devnode") or props(info).get("DEVNAME")
    if node:
        return node if node.startswith("/dev/") else "/dev/" + node
    name = kernel_name(info)
    return devnames.dev_path(name) if name else None


def display_name(info: dict) -> str:
    path = dev_path(info)
    if path and path.startswith("/dev/"):
        return path[len("/dev/"):]
    return devnames.display(kernel_name(info))


def devlinks(info: dict) -> list[str]:
    links = info.get("devlinks") or []
    if not links:
        links = props(info).get("DEVLINKS", "").split()
    return sorted(set(links))


def wwn(info: dict) -> str | None:
    p = props(info)
    value = p.get("ID_WWN_WITH_EXTENSION") or p.get("ID_WWN")
    if value:
        return value
    # Without udev: NVMe's wwid attribute, or the SCSI VPD 0x83 designator.
    value = attr(info, "wwid") or attr(info, "device/wwid") or parent_attr(info, "wwid")
    if value:
        value = value.strip()
        if value.startswith("naa."):
            return "0x" + value[4:].lower()
        return value
    if is_cciss(info):
        # cciss has no VPD in sysfs; its unique_id is the volume's NAA.
        uid = parent_attr(info, "unique_id")
        return "0x" + uid.lower() if uid else None
    return None


def serial(info: dict) -> str | None:
    p = props(info)
    for key in ("ID_SCSI_SERIAL", "ID_SERIAL_SHORT", "ID_SERIAL"):
        if p.get(key):
            return p[key]
    value = attr(info, "serial") or attr(info, "device/serial")
    if value:
        return value
    if is_usb(info):
        usb = parent_with(info, "usb", "usb_device")
        if usb is not None:
            return (usb.get("attrs") or {}).get("serial")
    if is_nvme(info):
        return parent_attr(info, "serial")
    if is_cciss(info):
        return parent_attr(info, "unique_id")
    return None


def scsi_wwid(info: dict) -> str | None:
    """The WWID multipath uses: scsi_id's ID_SERIAL ("3" + NAA), else from VPD 0x83."""
    p = props(info)
    if p.get("ID_SERIAL") and p.get("ID_BUS") == "scsi":
        return p["ID_SERIAL"]
    value = (attr(info, "device/wwid") or parent_attr(info, "wwid") or "").strip()
    for prefix, kind in (("naa.", "3"), ("eui.", "2"), ("t10.", "1")):
        if value.startswith(prefix):
            return kind + value[len(prefix):].lower()
    return p.get("ID_SERIAL") or None




def multipath_key(info: dict) -> str | None:
    """Identity of the LUN behind a path: the same through every path."""
    return scsi_wwid(info)


def model(info: dict) -> str | None:
    p = props(info)
    if p.get("ID_MODEL_FROM_DATABASE") and not p.get("ID_MODEL"):
        return p["ID_MODEL_FROM_DATABASE"]
    if p.get("ID_MODEL"):
        # udev replaces spaces with '_' in ID_MODEL; the _ENC form keeps them.
        enc = p.get("ID_MODEL_ENC")
        if enc:
            return decode_udev_enc(enc).strip()
        return p["ID_MODEL"].replace("_", " ").strip()
    value = attr(info, "device/model") or attr(info, "model") or parent_attr(info, "model")
    if value:
        return value.strip()
    usb = parent_with(info, "usb", "usb_device")
    if usb is not None:
        return (usb.get("attrs") or {}).get("product")
    return None


def vendor(info: dict) -> str | None:
    p = props(info)
    enc = p.get("ID_VENDOR_ENC")
    if enc:
        return decode_udev_enc(enc).strip() or None
    if p.get("ID_VENDOR"):
        return p["ID_VENDOR"].replace("_", " ").strip()
    value = attr(info, "device/vendor") or parent_attr(info, "vendor")
    if value and not value.startswith("0x"):
        return value.strip()
    return None


def decode_udev_enc(value: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


# --- links (for the estimator) ------------------------------------------------

def usb_speed_label(mbps: int | None) -> str:
    if mbps is None:
        return "USB (unknown speed)"
    if mbps >= 20000:
        return "USB 3.2 Gen 2x2"
    if mbps >= 10000:
        return "USB 3.1 Gen 2"
    if mbps >= 5000:
        return "USB 3.0"
    if mbps >= 480:
        return "USB 2.0"
    return "USB 1.1"


def sata_speed_mbps(text: str | None) -> int | None:
    """'3.0 Gbps' -> 3000; '<unknown>' (link down) -> None."""
    if not text:
        return None
    m = re.match(r"\s*([\d.]+)\s*Gbps", text)
    return int(float(m.group(1)) * 1000) if m else None


_PCI_FUNCTION = re.compile(r"/([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/(?:virtio\d+/)?net/[^/]+$")


def nic_pci_slot(sys_path: str) -> str | None:
    """The PCI function a NIC sits on, from its sysfs path: .../0000:02:00.0/net/eno1, or a
    virtio NIC's .../0000:00:03.0/virtio0/net/eth0. USB and virtual NICs: None."""
    m = _PCI_FUNCTION.search(sys_path)
    return m.group(1) if m else None
