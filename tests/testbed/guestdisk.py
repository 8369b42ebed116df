"""Small guest disks for the conversion tests, built without mounting anything: a real GPT
(parted on the image file) and a real ext4 filled from a directory tree (mke2fs -d at the
partition's offset); and reading a file back out of a qcow2 the same way (qemu-img, debugfs),
independently of libguestfs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile

from agent import protocol as P
from agent.receive.receiver import Receiver
from agent.runcmd import run

MiB = 1 << 20
DEBIAN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "debian_disk.sh")


def debian_disk(base: str, cache_dir: str, firmware: str = "bios", layout: str = "plain") -> str:
    """The bootable Debian 12 disk of debian_disk.sh (``firmware`` bios: MBR + GRUB pc; uefi: GPT
    + ESP + GRUB EFI), built from ``base`` (the live ISO build's debootstrap tarball), cached in
    ``cache_dir`` under the script's own digest: a changed script builds a new disk instead of
    reusing one made by an older version. ``layout`` lvm (bios only): root on LV ccvm/root, the
    disk with /boot and an empty PV partition, the root filesystem beside it as DISK.rootfs."""
    with open(DEBIAN_SCRIPT, "rb") as f:
        tag = hashlib.sha256(f.read()).hexdigest()[:12]
    os.makedirs(cache_dir, exist_ok=True)
    kind = firmware if layout == "plain" else f"{firmware}-{layout}"
    disk = os.path.join(cache_dir, f"debian12-{kind}-{tag}.raw")
    run(["sh", DEBIAN_SCRIPT, disk, base, firmware, layout], timeout=1800,
        hint=f"building the Debian test disk ({kind}) failed")
    return disk


def ext4_disk(image: str, tree: dict[str, str], size_mib: int = 64, uuid: str | None = None) -> None:
    """A GPT disk with one ext4 partition (1 MiB .. end) holding `tree` (path -> text)."""
    with open(image, "wb") as f:
        f.truncate(size_mib * MiB)
    run(["parted", "-s", image, "mklabel", "gpt", "mkpart", "root", "ext4", "1MiB", f"{size_mib - 1}MiB"])
    src = tempfile.mkdtemp(prefix="guesttree-")
    try:
        for rel, text in tree.items():
            path = os.path.join(src, rel.lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        argv = ["mkfs.ext4", "-F", "-q", "-E", f"offset={MiB}", "-d", src]
        if uuid:
            argv += ["-U", uuid]
        run(argv + [image, f"{size_mib - 2}M"])
    finally:
        shutil.rmtree(src)


def _write_stream(out, capture_id: str, disks: dict[str, str]) -> None:
    """The records the agent would send for these raw images, read and sent chunk by chunk
    (DATA records stay under the protocol's limit, and a 2 GiB disk is never all in memory)."""
    bs = P.DEFAULT_BLOCK_SIZE
    out.write(P.preamble())
    out.write(P.encode_json(P.T_HELLO, {"capture_id": capture_id, "format": "qcow2",
                                        "agent_version": "test", "disks": list(disks)}))
    for name, path in disks.items():
        size = os.path.getsize(path)
        out.write(P.encode_json(P.T_DISK, {"name": name, "size": size, "block_size": bs, "mode": "nonzero"}))
        tree = P.BlockTree(size, bs)
        with open(path, "rb") as f:
            off = 0
            while off < size:
                data = f.read(P.DEFAULT_CHUNK_SIZE)
                for ext in P.split_extents(data, off, bs):
                    if ext.zero:
                        out.write(P.encode_zero(ext.offset, ext.length))
                        tree.add_zero(ext.offset, ext.length)
                    else:
                        out.write(P.encode_data(ext.offset, ext.length, P.CODEC_NONE,
                                                P.record_digest(ext.digests), bytes(ext.data)))
                        tree.add_digests(ext.offset, ext.length, ext.digests)
                off += len(data)
        out.write(P.encode_end(tree.digest(), {"bytes_read": size}))
    out.write(P.encode_json(P.T_FINISH, {}))


def make_capture(root: str, capture_id: str, disks: dict[str, str]) -> str:
    """A complete capture dir made by the real receiver from these raw disk images (name -> path),
    so its manifest.json is exactly what coldclone-receive writes."""
    with tempfile.TemporaryFile(dir=root) as stream:
        _write_stream(stream, capture_id, disks)
        stream.seek(0)
        out = io.BytesIO()
        rc = Receiver(root, out).run(stream)
    replies = [json.loads(l) for l in out.getvalue().splitlines() if l.strip()]
    assert rc == 0, replies
    return os.path.join(root, capture_id)


def read_ext4_file(qcow2: str, path: str, workdir: str, part_offset: int = MiB) -> str:
    """A file of the ext4 at part_offset inside a qcow2 (or its overlay chain): qemu-img writes the
    partition out as raw, debugfs reads the file. No appliance, no mount."""
    raw = os.path.join(workdir, "part.raw")
    run(["qemu-img", "dd", "-O", "raw", f"if={qcow2}", f"of={raw}", "bs=1M", f"skip={part_offset // MiB}"])
    try:
        return run(["debugfs", "-R", f"cat {path}", raw], quiet=True).stdout
    finally:
        os.unlink(raw)
