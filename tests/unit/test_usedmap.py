"""The used map's pure logic: partclone's domain mapfile, lvm2's metadata text, block painting."""

import pytest

from agent.source.capture import lvmmeta
from agent.source.capture.usedmap import Extent, Why, paint, parse_domain_map
from agent.errors import SourceError

K = 1 << 10

# As partclone.extfs -D --offset_domain=1048576 wrote it for a small ext4.
DOMAIN_MAP = """\
# Domain logfile created by unset_name v0.3.23
# Source: /dev/loop0
# Offset: 0x00100000
# current_pos  current_status
0x04100000     ?
#      pos        size  status
0x00100000  0x00448400  +
0x00548400  0x003B8000  ?
0x00900400  0x00040800  +
"""

# vgcfgbackup of a VG with a root LV in two segments on pv0 and a var LV on another PV.
VG_TEXT = """\
contents = "Text Format Volume Group"
version = 1
description = "vgcfgbackup"   # a comment
ccvg {
\tid = "JNgex0-YD9l-wquI-e031-FPSW-cwKP-ohaE4y"
\tseqno = 2
\tstatus = ["RESIZEABLE", "READ", "WRITE"]
\textent_size = 8192\t\t# 4 Megabytes
\tphysical_volumes {
\t\tpv0 {
\t\t\tid = "jj7qyT-3LBE-Hu0F-Hi0B-hxIi-Sdei-AIsBDc"
\t\t\tdevice = "/dev/loop0"\t# Hint only
\t\t\tpe_start = 2048
\t\t\tpe_count = 49
\t\t}
\t\tpv1 {
\t\t\tid = "zzzzzz-3LBE-Hu0F-Hi0B-hxIi-Sdei-AIsBDc"
\t\t\tpe_start = 2048
\t\t\tpe_count = 10
\t\t}
\t}
\tlogical_volumes {
\t\troot {
\t\t\tsegment_count = 2
\t\t\tsegment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 1 stripes = ["pv0", 2] }
\t\t\tsegment2 { start_extent = 4 extent_count = 3 type = "striped" stripe_count = 1 stripes = ["pv0", 10] }
\t\t}
\t\tvar {
\t\t\tsegment_count = 2
\t\t\tsegment1 { start_extent = 0 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv0", 20] }
\t\t\tsegment2 { start_extent = 5 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }
\t\t}
\t}
}
"""


def test_domain_map_rows():
    rows = parse_domain_map(DOMAIN_MAP)
    assert rows == [(0x100000, 0x448400, "+"), (0x548400, 0x3B8000, "?"), (0x900400, 0x40800, "+")]
    with pytest.raises(SourceError, match="unexpected line"):
        parse_domain_map("0x0 zz +\n")


def test_lvm_metadata_segments_and_free_extents():
    pv = lvmmeta.parse_pv("jj7qyT3LBEHu0FHi0BhxIiSdeiAIsBDc", VG_TEXT)
    assert (pv.vg, pv.extent_size, pv.pe_start, pv.pe_count) == ("ccvg", 4 << 20, 1 << 20, 49)
    root, var = pv.lvs
    assert [(s.pe_first, s.pe_count, s.le_first) for s in root.segments] == [(2, 4, 0), (10, 3, 4)]
    assert root.whole_here and not var.whole_here and "pv1" in var.other[0]
    assert pv.free_extents() == [(0, 2), (6, 4), (13, 7), (25, 24)]
    assert pv.extent_offset(2) == (1 << 20) + 2 * (4 << 20)


def test_lvm_metadata_errors_are_named():
    with pytest.raises(lvmmeta.LvmMetadataError, match="does not list this PV"):
        lvmmeta.parse_pv("x" * 32, VG_TEXT)
    with pytest.raises(lvmmeta.LvmMetadataError, match="not closed"):
        lvmmeta.parse_text("vg { a = 1 ")


def test_paint_aligns_skips_inward_and_sends_outward():
    bs = 64 * K
    size = 1024 * K
    ext = paint(size, bs, [(10 * K, 100 * K, Why.USED), (100 * K, 700 * K, Why.FREE),
                           (700 * K, 1024 * K, Why.SWAP)])
    # FREE 100K..700K shrinks to 128K..640K; the block 640K..704K is partly free and partly
    # swap, known as neither whole: sent.
    assert ext == [Extent(0, 128 * K, Why.USED), Extent(128 * K, 512 * K, Why.FREE),
                   Extent(640 * K, 64 * K, Why.LAYOUT), Extent(704 * K, 320 * K, Why.SWAP)]
    # Uncovered space is layout (sent); a free range smaller than a block is not skipped.
    assert paint(size, bs, [(200 * K, 300 * K, Why.FREE)]) == [Extent(0, size, Why.LAYOUT)]
    assert paint(size, bs, [(100 * K, 400 * K, Why.FREE)]) == [
        Extent(0, 128 * K, Why.LAYOUT), Extent(128 * K, 256 * K, Why.FREE), Extent(384 * K, 640 * K, Why.LAYOUT)]
    # A used block inside free space wins over the free around it.
    ext = paint(size, bs, [(0, 1024 * K, Why.FREE), (300 * K, 301 * K, Why.USED)])
    assert ext == [Extent(0, 256 * K, Why.FREE), Extent(256 * K, 64 * K, Why.USED),
                   Extent(320 * K, 704 * K, Why.FREE)]


def test_maps_reused_only_inside_one_job_scope(tmp_path):
    """Inside maps_reused() (one capture job: estimate, then capture) a disk is mapped once and
    the same map serves both; outside it every call maps afresh (a disk may change between jobs)."""
    from agent.source.capture.usedmap import maps_reused, plan_disk
    img = tmp_path / "disk.img"
    img.write_bytes(b"\1" * (1 << 20))
    path, size = str(img), 1 << 20
    assert plan_disk(path, size, 65536) is not plan_disk(path, size, 65536)
    with maps_reused():
        first = plan_disk(path, size, 65536)
        assert plan_disk(path, size, 65536) is first
        assert plan_disk(path, size, 4096) is not first     # another block size: its own map
    assert plan_disk(path, size, 65536) is not first
