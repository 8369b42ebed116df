"""LVM2 physical volumes read from their own bytes: which PV extents hold which LV segment.

The live system has no device-mapper to spare (and activating the source's volume groups would
change state on the source), so the used-block map reads the PV's label and its text metadata
itself, the way lvm2 lays them out on disk (lib/format_text/layout.h):

  sector 0..3     label_header "LABELONE" .. "LVM2 001", then pv_header: uuid, device size,
                  data areas, metadata areas (lists of offset/size, each ended by a zero pair)
  metadata area   mda_header " LVM2 x[5A%r0N*>" with raw_locn slots: the current metadata text
                  lives at area.offset + slot.offset (circular buffer after the 512-byte header)

Only reading: callers pass an fd opened O_RDONLY on a device already set read-only.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from ...errors import SourceError

SECTOR = 512
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512


class LvmMetadataError(SourceError):
    """The PV's label or metadata is not what lvm2 writes (damaged, or a format we do not read)."""


@dataclass(frozen=True)
class PvSegment:
    """Extents [pe_start, pe_start + pe_count) of this PV belong to LV `lv` (from its extent le_start)."""
    lv: str
    pe_first: int
    pe_count: int
    le_first: int


@dataclass
class LogicalVolume:
    name: str
    extents: int                                             # the LV's size in extents
    segments: list[PvSegment] = field(default_factory=list)  # its segments on THIS PV, in LV order
    other: list[str] = field(default_factory=list)           # why parts of it are not here (other PVs, raid...)

    @property
    def whole_here(self) -> bool:
        return not self.other and sum(s.pe_count for s in self.segments) == self.extents


@dataclass
class PhysicalVolume:
    """One PV as its metadata describes it. Offsets in bytes from the start of the PV."""
    vg: str
    pv_uuid: str
    extent_size: int          # bytes
    pe_start: int             # bytes: where extent 0 begins
    pe_count: int
    lvs: list[LogicalVolume] = field(default_factory=list)

    def extent_offset(self, pe: int) -> int:
        return self.pe_start + pe * self.extent_size

    def allocated(self) -> list[PvSegment]:
        return sorted((s for lv in self.lvs for s in lv.segments), key=lambda s: s.pe_first)

    def free_extents(self) -> list[tuple[int, int]]:
        """(first PE, count) runs that no LV uses: unallocated space, never read."""
        out, pos = [], 0
        for s in self.allocated():
            if s.pe_first > pos:
                out.append((pos, s.pe_first - pos))
            pos = max(pos, s.pe_first + s.pe_count)
        if pos < self.pe_count:
            out.append((pos, self.pe_count - pos))
        return out


# ------------------------------------------------------------------ the text format

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+)|(?P<id>[A-Za-z_.+\-][\w.+\-]*)|(?P<p>[={}\[\],])')


def parse_text(text: str) -> dict:
    """lvm2's metadata text (sections `name { ... }`, `key = value`, lists `[a, b]`) as nested dicts."""
    tokens: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos] == "\0":        # the text ends with a NUL in the metadata area
                break
            raise LvmMetadataError(f"LVM metadata: unexpected {text[pos:pos + 20]!r} at character {pos}")
        pos = m.end()
        if m.group("str") is not None:
            tokens.append(("v", re.sub(r"\\(.)", r"\1", m.group("str")[1:-1])))
        elif m.group("num") is not None:
            tokens.append(("v", int(m.group("num"))))
        elif m.group("id") is not None:
            tokens.append(("id", m.group("id")))
        elif m.group("p") is not None:
            tokens.append(("p", m.group("p")))
    it = iter(tokens + [("end", None)])
    return _section(it, top=True)


def _section(it, top: bool = False) -> dict:
    out: dict = {}
    for kind, val in it:
        if kind == "end":
            if not top:
                raise LvmMetadataError("LVM metadata: a section is not closed")
            return out
        if kind == "p" and val == "}":
            if top:
                raise LvmMetadataError("LVM metadata: '}' without its section")
            return out
        if kind != "id":
            raise LvmMetadataError(f"LVM metadata: expected a name, got {val!r}")
        k2, v2 = next(it)
        if (k2, v2) == ("p", "{"):
            out[val] = _section(it)
        elif (k2, v2) == ("p", "="):
            out[val] = _value(it)
        else:
            raise LvmMetadataError(f"LVM metadata: expected '=' or '{{' after {val!r}")
    raise LvmMetadataError("LVM metadata: truncated")


def _value(it):
    kind, val = next(it)
    if kind == "v":
        return val
    if (kind, val) == ("p", "["):
        items: list = []
        for k, v in it:
            if (k, v) == ("p", "]"):
                return items
            if (k, v) == ("p", ","):
                continue
            if k != "v":
                raise LvmMetadataError(f"LVM metadata: unexpected {v!r} in a list")
            items.append(v)
    raise LvmMetadataError(f"LVM metadata: unexpected value {val!r}")


# ------------------------------------------------------------------ the on-disk layout

def _pread(fd: int, n: int, off: int) -> bytes:
    buf = os.pread(fd, n, off)
    if len(buf) != n:
        raise LvmMetadataError(f"LVM PV: short read at byte {off}")
    return buf


def _locns(buf: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    out = []
    while pos + 16 <= len(buf):
        off, size = struct.unpack_from("<QQ", buf, pos)
        pos += 16
        if off == 0:
            return out, pos
        out.append((off, size))
    raise LvmMetadataError("LVM PV: the pv_header's area list is not terminated")


def read_metadata_text(fd: int, base: int) -> tuple[str, str]:
    """(PV uuid, the current metadata text) of the PV that starts at byte `base` of fd."""
    head = _pread(fd, 4 * SECTOR, base)
    for s in range(4):
        lab = head[s * SECTOR:(s + 1) * SECTOR]
        if lab[:8] == LABEL_ID and lab[24:32] == LABEL_TYPE:
            break
    else:
        raise LvmMetadataError("no LVM2 label (LABELONE) in the first four sectors")
    (pvh_off,) = struct.unpack_from("<I", lab, 20)
    pvh = lab[pvh_off:]
    uuid = pvh[:32].decode("ascii", "replace")
    _data, pos = _locns(pvh, 40)
    mdas, _ = _locns(pvh, pos)
    if not mdas:
        raise LvmMetadataError("the PV has no metadata area (its VG metadata lives on another PV only)")
    for mda_off, mda_size in mdas:
        mh = _pread(fd, MDA_HEADER_SIZE, base + mda_off)
        if mh[4:20] != MDA_MAGIC:
            continue
        start, size = struct.unpack_from("<QQ", mh, 24)
        off, length, _crc, _flags = struct.unpack_from("<QQII", mh, 40)
        if not length:
            continue
        # A circular buffer after the header: the text may wrap back to just past it.
        first = min(length, size - off)
        text = _pread(fd, first, base + start + off)
        if first < length:
            text += _pread(fd, length - first, base + start + MDA_HEADER_SIZE)
        return uuid, text.decode("utf-8", "replace")
    raise LvmMetadataError("no readable metadata area on the PV (damaged header)")


def _fmt_uuid(raw: str) -> str:
    """The label's 32 characters in the metadata's dashed form (6-4-4-4-4-4-6)."""
    parts, i = [], 0
    for n in (6, 4, 4, 4, 4, 4, 6):
        parts.append(raw[i:i + n])
        i += n
    return "-".join(parts)


def parse_pv(uuid_raw: str, text: str) -> PhysicalVolume:
    """This PV (by its label's uuid) and the LV segments on it, from the VG metadata text."""
    tree = parse_text(text)
    vgs = [(k, v) for k, v in tree.items() if isinstance(v, dict) and "physical_volumes" in v]
    if len(vgs) != 1:
        raise LvmMetadataError("LVM metadata without exactly one volume group")
    vg_name, vg = vgs[0]
    uuid = _fmt_uuid(uuid_raw)
    pvs = {k: v for k, v in vg["physical_volumes"].items() if isinstance(v, dict)}
    mine = [k for k, v in pvs.items() if v.get("id") == uuid]
    if not mine:
        raise LvmMetadataError(f"VG {vg_name} metadata does not list this PV ({uuid})")
    pv_key = mine[0]
    pvd = pvs[pv_key]
    sector_size = SECTOR
    extent = int(vg["extent_size"]) * sector_size
    pv = PhysicalVolume(vg=vg_name, pv_uuid=uuid, extent_size=extent,
                        pe_start=int(pvd["pe_start"]) * sector_size, pe_count=int(pvd["pe_count"]))
    for lv_name, lvd in (vg.get("logical_volumes") or {}).items():
        if not isinstance(lvd, dict):
            continue
        lv = LogicalVolume(name=lv_name, extents=0)
        segs = sorted((v for k, v in lvd.items() if k.startswith("segment") and isinstance(v, dict)),
                      key=lambda s: int(s.get("start_extent", 0)))
        for seg in segs:
            count = int(seg["extent_count"])
            lv.extents += count
            stripes = seg.get("stripes") or []
            if seg.get("type") != "striped" or int(seg.get("stripe_count", 0)) != 1 or len(stripes) != 2:
                lv.other.append(f"segment at LE {seg.get('start_extent')} is {seg.get('type')} "
                                f"({seg.get('stripe_count', '?')} stripes)")
                # Extents it holds on this PV still count as allocated (never skipped).
                for i in range(0, len(stripes) - 1, 2):
                    if stripes[i] == pv_key:
                        per = count // max(1, int(seg.get("stripe_count", 1)))
                        lv.segments.append(PvSegment(lv_name, int(stripes[i + 1]), per, -1))
                continue
            if stripes[0] != pv_key:
                lv.other.append(f"segment at LE {seg.get('start_extent')} is on {stripes[0]}")
                continue
            lv.segments.append(PvSegment(lv_name, int(stripes[1]), count, int(seg["start_extent"])))
        pv.lvs.append(lv)
    for s in pv.allocated():
        if s.pe_first < 0 or s.pe_first + s.pe_count > pv.pe_count:
            raise LvmMetadataError(f"LV {s.lv} extents {s.pe_first}+{s.pe_count} outside the PV's {pv.pe_count}")
    return pv


def read_pv(fd: int, base: int) -> PhysicalVolume:
    uuid, text = read_metadata_text(fd, base)
    return parse_pv(uuid, text)
