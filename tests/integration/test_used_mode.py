"""mode=used on real loop disks, captured through the real sshd and receiver.

The image is not byte-identical on free space (that is the point), so each test proves it
another way: every extent the used map sends equals the source and every skipped one is a hole,
the wire carried less than a nonzero capture (the deleted data stayed home), the filesystem
checker finds the image's filesystem clean, and the file trees of source and image are equal.
"""

import json
import os

import pytest

from agent import protocol as P
from agent.source.capture.usedmap import Why, plan_disk
from agent.runcmd import run
from tests.conftest import coldclone, sha256_of, ssh_args
from tests.testbed import useddisk
from tests.testbed.useddisk import assert_extents
from tests.testbed.loop import LoopDevice

pytestmark = pytest.mark.root
MiB = 1 << 20

FILESYSTEMS = [("ext4", "gpt"), ("ext3", "msdos"), ("ext2", "gpt"), ("xfs", "gpt"),
               ("btrfs", "msdos"), ("vfat", "gpt"), ("ntfs", "msdos")]


def capture(sshd, rx_dir, dev, cap_id, mode):
    r = coldclone("capture", "--disk", dev, *ssh_args(sshd, rx_dir), "--capture-id", cap_id, "--mode", mode)
    assert r.returncode == 0, r.stderr
    cap = os.path.join(rx_dir, cap_id)
    m = json.load(open(os.path.join(cap, "manifest.json")))
    return m, os.path.join(cap, os.path.basename(dev) + ".qcow2")


def area(m, name):
    (disk,) = m["disks"]
    found = [a for a in disk["agent"]["used_map"]["areas"] if a["name"] == name]
    assert found, [a["name"] for a in disk["agent"]["used_map"]["areas"]]
    return found[0]


@pytest.mark.parametrize("fs,table", FILESYSTEMS, ids=[f"{f}-{t}" for f, t in FILESYSTEMS])
def test_used_mode_filesystem(sshd, rx_dir, tmp_path, fs, table):
    d = useddisk.build(str(tmp_path / "src.img"), fs, table, size=400 * MiB)
    with LoopDevice(d.image) as loop:
        part = {int(p.rsplit("p", 1)[1]): p for p in loop.parts}
        before = sha256_of(loop.dev)
        m_used, q_used = capture(sshd, rx_dir, loop.dev, "used", "used")
        m_nz, _ = capture(sshd, rx_dir, loop.dev, "nonzero", "nonzero")
        assert sha256_of(loop.dev) == before, "the source changed"

        (disk,) = m_used["disks"]
        assert disk["mode"] == "used"
        assert disk["verified"]["disk_digest"] and disk["verified"]["qemu_img_check"]
        # The deleted data stayed home: the wire carried less than nonzero did, by most of it.
        w_used, w_nz = m_used["totals"]["stream_bytes"], m_nz["totals"]["stream_bytes"]
        assert w_used < w_nz - d.deleted_bytes * 0.5, (w_used, w_nz)
        assert disk["agent"]["bytes_read"] < m_nz["disks"][0]["agent"]["bytes_read"] - d.deleted_bytes

        # The manifest says how each part was mapped.
        fsa = area(m_used, f"partition {d.fs_part}")
        assert fsa["content"] == fs and fsa["tool"].startswith("partclone.") and not fsa["fallback"]
        assert 0 < fsa["used_bytes"] < fsa["size"] and fsa["skipped_bytes"] > d.deleted_bytes * 0.5
        swap = area(m_used, f"partition {d.swap_part}")
        assert swap["content"] == "swap" and swap["skipped_bytes"] > 0
        junk = area(m_used, f"partition {d.unknown_part}")
        assert junk["content"] == "unknown" and "sent as nonzero" in junk["fallback"]
        if d.boot_part:
            assert area(m_used, f"partition {d.boot_part}")["content"] == "boot"

        raw = useddisk.to_raw(q_used, str(tmp_path))
        umap = plan_disk(loop.dev, os.path.getsize(d.image), P.DEFAULT_BLOCK_SIZE)
        assert umap.skipped_bytes == disk["agent"]["skipped_bytes"]
        assert_extents(loop.dev, raw, umap)
        # The estimate's used mode reads what the capture read: the same map.
        r = coldclone("estimate", "--disk", loop.dev, "--mode", "used", "--calibrate", "0", "--json")
        assert r.returncode == 0, r.stderr
        (est,) = json.loads(r.stdout)["disks"]
        assert abs(est["bytes_to_read"] - disk["agent"]["bytes_read"]) <= P.DEFAULT_BLOCK_SIZE
        assert "map" in est["stages"]
        with LoopDevice(raw, read_only=True) as img:
            ipart = {int(p.rsplit("p", 1)[1]): p for p in img.parts}
            # Swap: the header page (label, UUID) kept, the old pages not.
            with open(part[d.swap_part], "rb") as s, open(ipart[d.swap_part], "rb") as i:
                assert i.read(4096) == s.read(4096)
                i.seek(1 * MiB)
                s.seek(1 * MiB)
                assert i.read(MiB) == bytes(MiB) and s.read(MiB) != bytes(MiB)
            # Unknown content and the boot partition: exactly the source.
            for n in (d.unknown_part, d.boot_part):
                if n:
                    assert sha256_of(ipart[n]) == sha256_of(part[n])
            run(useddisk.CHECK[fs] + [ipart[d.fs_part]])
            with useddisk.file_tree(part[d.fs_part], fs) as a, useddisk.file_tree(ipart[d.fs_part], fs) as b:
                ta = useddisk.tree_digest(a, extracted=fs == "vfat")
                tb = useddisk.tree_digest(b, extracted=fs == "vfat")
        assert len(ta) > 50 and ta == tb


def test_used_mode_lvm(sshd, rx_dir, tmp_path):
    """Root on an LV: its extents are found from the PV's metadata and mapped by partclone; the
    unallocated gap (old data) is not read; an LV in two pieces falls back to nonzero."""
    d = useddisk.build_lvm(str(tmp_path / "lvm.img"))
    with LoopDevice(d.image) as loop:
        pv = {int(p.rsplit("p", 1)[1]): p for p in loop.parts}[d.pv_part]
        before = sha256_of(loop.dev)
        m, q = capture(sshd, rx_dir, loop.dev, "lvm", "used")
        assert sha256_of(loop.dev) == before, "the source changed"
        pva = area(m, f"partition {d.pv_part}")
        assert pva["content"] == "LVM2_member" and "VG ccvg" in pva["notes"][0]
        root = area(m, "LV ccvg/root")
        assert root["content"] == "ext4" and root["tool"] == "partclone.extfs"
        assert root["skipped_bytes"] > d.deleted_bytes * 0.5
        assert area(m, "LV ccvg/swap")["content"] == "swap"
        assert "2 pieces" in area(m, "LV ccvg/var")["fallback"]
        by = m["disks"][0]["agent"]["used_map"]["bytes_by_reason"]
        assert by["unallocated"] >= d.gap[1] * useddisk.EXTENT

        raw = useddisk.to_raw(q, str(tmp_path))
        umap = plan_disk(loop.dev, d.size, P.DEFAULT_BLOCK_SIZE)
        assert_extents(loop.dev, raw, umap)
        skipped = [e for e in umap.extents if e.why == Why.UNALLOCATED]
        assert skipped, umap.extents
        with LoopDevice(raw, read_only=True) as img:
            ipv = {int(p.rsplit("p", 1)[1]): p for p in img.parts}[d.pv_part]
            # The gap's old data stayed home; the LVM label and metadata came along.
            gap_off = d.pe_start + d.gap[0] * useddisk.EXTENT
            with open(ipv, "rb") as i, open(pv, "rb") as s:
                assert os.pread(i.fileno(), MiB, gap_off) == bytes(MiB) != os.pread(s.fileno(), MiB, gap_off)
                assert os.pread(i.fileno(), d.pe_start, 0) == os.pread(s.fileno(), d.pe_start, 0)
            off, ln = d.lv_range("root")
            from agent.source.capture.usedmap import range_loop
            with range_loop(ipv, off, ln) as iroot, range_loop(pv, off, ln) as sroot:
                run(useddisk.CHECK["ext4"] + [iroot])
                with useddisk.file_tree(sroot, "ext4") as a, useddisk.file_tree(iroot, "ext4") as b:
                    ta, tb = useddisk.tree_digest(a), useddisk.tree_digest(b)
        assert len(ta) > 50 and ta == tb


def test_pending_journal_falls_back(tmp_path):
    """A filesystem whose journal or log still has to be replayed (the server crashed) is sent
    as nonzero: its bitmaps may call free the blocks the replay writes home."""
    img = str(tmp_path / "crashed.img")
    with open(img, "wb") as f:
        f.truncate(720 * MiB)
    run(["parted", "-s", img, "mklabel", "gpt", "mkpart", "a", "1MiB", "301MiB",
         "mkpart", "b", "301MiB", "100%"])
    with LoopDevice(img) as loop:
        ext, xfs = loop.parts
        run(["mkfs.ext4", "-q", "-F", ext])
        run(["debugfs", "-w", "-R", "feature needs_recovery", ext])
        run(["mkfs.xfs", "-q", "-f", xfs])
        mnt = str(tmp_path / "m")
        os.mkdir(mnt)
        run(["mount", xfs, mnt])
        try:
            with open(os.path.join(mnt, "f"), "wb") as f:
                f.write(os.urandom(MiB))
                os.fsync(f.fileno())      # the transaction reaches the on-disk log ...
            run(["xfs_io", "-x", "-c", "shutdown", mnt])   # ... and no checkpoint: the log stays dirty
        finally:
            run(["umount", mnt])
        umap = plan_disk(loop.dev, 720 * MiB, P.DEFAULT_BLOCK_SIZE)
    a, b = umap.areas
    assert a.content == "ext4" and "journal needs recovery" in a.fallback
    assert b.content == "xfs" and "log is dirty" in b.fallback
    assert not any(e.why in (Why.FREE, Why.USED) for e in umap.extents)
