"""How fast bytes really move over each kind of link: the one table, and the link classification.

Nominal rates are what the interface is sold as; effective rates are what a
disk capture really gets through it. The effective rates of USB 2.0, USB 3.0,
e-SATA and NFS on 1 GbE are the measurements of the 2015 field study cited in
shared/DESIGN.md (TIS Inc., P2V of Dell PowerEdge R430 servers to Red Hat
OpenStack, `dd` of a 100 GB disk):

    USB 2.0   60 MB/s on paper, ~25 MB/s real  (4096 s per 100 GB)
    USB 3.0  640 MB/s on paper, ~100 MB/s real (1024 s per 100 GB)
    e-SATA   384 MB/s on paper, ~180 MB/s real (569 s per 100 GB)
    NFS/1GbE 128 MB/s on paper, ~100 MB/s real (1024 s per 100 GB)

Everything else is derived from those, and says so in its `source`. A
calibration probe (agent.source.estimate.calibrate) replaces these figures with a
measured rate; the table is what the estimate falls back to without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...estimate_model import LinkEstimate

MB = 1_000_000  # rates are in decimal MB/s, as link speeds and the field study are

STUDY = "2015 field study (shared/DESIGN.md)"


@dataclass(frozen=True)
class LinkSpec:
    key: str
    label: str
    nominal: float        # bytes/s the interface is sold as
    effective: float      # bytes/s a capture really gets
    source: str

    @property
    def efficiency(self) -> float:
        return self.effective / self.nominal if self.nominal else 1.0


def _spec(key, label, nominal_mb, effective_mb, source) -> LinkSpec:
    return LinkSpec(key, label, nominal_mb * MB, effective_mb * MB, source)


# Efficiencies carried over from the study to links it did not measure.
NFS_EFFICIENCY = 100 / 125      # NFS on 1 GbE: ~100 MB/s of the 125 MB/s that 1 Gb/s carries (study)
ESATA_EFFICIENCY = 180 / 384    # e-SATA: 180 of 384 MB/s (study); SATA links speed / 8, as the study counts
# SSH over a NIC: TCP/IPv4 over Ethernet at MTU 1500 carries 1448 payload bytes per 1538 bytes on
# the wire (94.1%); SSH channel packets of 32 KiB add 0.2% (header, padding, GCM tag); we keep
# 4% for ACK and window stalls on a loaded conversion server. The agent's own cipher and framing
# cost (paramiko) is CPU, measured by the calibration probe, not part of the link.
SSH_EFFICIENCY = 0.90

TABLE: dict[str, LinkSpec] = {s.key: s for s in (
    _spec("usb1", "USB 1.1 link", 1.5, 1.0, "USB 1.1 full speed 12 Mb/s; bulk transfers reach ~1 MB/s"),
    _spec("usb2", "USB 2.0 link", 60, 25, STUDY + ": 4096 s per 100 GB"),
    _spec("usb3", "USB 3.0 link", 640, 100, STUDY + ": 1024 s per 100 GB"),
    # Not in the study: the study's USB 3.0 efficiency (100/640) applied to 10 Gb/s, and bounded
    # by what one SATA SSD behind a UAS bridge writes (~400 MB/s).
    _spec("usb3g2", "USB 3.1 Gen 2 link", 1280, 200, "USB 3.0 efficiency of the study x 1280 MB/s"),
    _spec("esata", "e-SATA link", 384, 180, STUDY + ": 569 s per 100 GB"),
    _spec("nfs1g", "NFS over 1 GbE", 128, 100, STUDY + ": 1024 s per 100 GB"),
)}


def from_table(key: str, kind: str, name: str = "", label: str | None = None) -> LinkEstimate:
    s = TABLE[key]
    return LinkEstimate(kind, label or s.label, s.effective, s.source, name)


def usb_key(speed_mbps: int | None) -> str:
    """USB bus speed (sysfs `speed`, Mb/s) -> table key. Unknown: assume USB 2.0, the common case."""
    if speed_mbps is None:
        return "usb2"
    if speed_mbps >= 10000:
        return "usb3g2"
    if speed_mbps >= 5000:
        return "usb3"
    if speed_mbps >= 480:
        return "usb2"
    return "usb1"


def classify_disk_link(link) -> LinkEstimate | None:
    """A discovery Link (agent.source.discover.model.Link: kind usb/sata/nic, speed_mbps) -> LinkEstimate."""
    if link is None:
        return None
    if link.kind == "usb":
        key = usb_key(link.speed_mbps)
        label = None if link.speed_mbps is not None else "USB link (speed unknown, taken as USB 2.0)"
        return from_table(key, "usb", link.name, label)
    if link.kind == "sata":
        # The study counts SATA II (3.0 Gb/s) as 384 MB/s: Gb/s x 128. Link down or unknown
        # speed: taken as SATA II, the study's e-SATA.
        gbps = (link.speed_mbps or 3000) / 1000
        nominal = gbps * 128 * MB
        src = (TABLE["esata"].source if gbps == 3.0 else
               f"e-SATA efficiency of the study ({ESATA_EFFICIENCY:.2f}) x {gbps * 128:.0f} MB/s")
        label = f"SATA {gbps:.1f} Gb/s link" if link.speed_mbps else "SATA link (speed unknown)"
        return LinkEstimate("sata", label, nominal * ESATA_EFFICIENCY, src, link.name)
    if link.kind == "nic":
        return nic_link(link.name, link.speed_mbps, "ssh")
    return None


def nic_link(name: str, speed_mbps: int | None, protocol: str) -> LinkEstimate:
    """SSH or NFS over a network interface at its negotiated speed."""
    known = bool(speed_mbps)
    mbps = speed_mbps or 1000   # virtual NICs report no speed: assume gigabit, the usual server port
    speed_text = f"{mbps} Mb/s" if known else "speed unknown, taken as 1000 Mb/s"
    nominal = mbps / 8 * MB
    if protocol == "nfs":
        eff, src = NFS_EFFICIENCY, (STUDY + ": ~100 MB/s on 1 GbE" if mbps == 1000 else
                                   f"NFS efficiency of the study ({NFS_EFFICIENCY:.2f}) x {mbps / 8:.0f} MB/s")
        label = f"NFS over {name} ({speed_text})" if name else f"NFS ({speed_text})"
    else:
        eff, src = SSH_EFFICIENCY, f"TCP over Ethernet 94% x SSH framing, less stalls: {SSH_EFFICIENCY:.2f} x {mbps / 8:.0f} MB/s"
        label = f"SSH over {name} ({speed_text})" if name else f"SSH ({speed_text})"
    return LinkEstimate(protocol, label, nominal * eff, src, name)


# What a source disk reads at when nothing was measured (calibration skipped): typical sequential
# rates of the disks these servers hold. Calibration replaces them with a timed read.
SOURCE_READ_DEFAULTS = {
    "hdd": (150 * MB, "7200 rpm SATA/SAS disk, outer-to-inner average"),
    "raid": (300 * MB, "hardware RAID logical drive of a few spindles"),
    "ssd": (450 * MB, "SATA SSD"),
    "nvme": (1500 * MB, "NVMe SSD, conservative"),
}


def source_read_default(disk) -> tuple[float, str]:
    """A discovery Disk (or None) -> (bytes/s, why) when the source read rate was not measured."""
    if disk is None:
        return SOURCE_READ_DEFAULTS["hdd"]
    if disk.transport == "nvme":
        return SOURCE_READ_DEFAULTS["nvme"]
    if disk.kind == "raid-logical-drive":
        return SOURCE_READ_DEFAULTS["raid"]
    link = classify_disk_link(disk.link)
    if link is not None and link.kind == "usb":
        return link.rate, f"source behind a {link.label}: {link.source}"
    if disk.transport in ("iscsi",):
        return nic_link("", None, "nfs").rate, "iSCSI LUN over 1 GbE (NFS-like efficiency)"
    if disk.rotational is False:
        return SOURCE_READ_DEFAULTS["ssd"]
    return SOURCE_READ_DEFAULTS["hdd"]
