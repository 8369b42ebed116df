"""Small guest disks for the conversion tests, built without mounting anything: a real GPT
(parted on the image file) and a real ext4 filled from a directory tree (mke2fs -d at the
partition's offset); and reading a file back out of a qcow2 the same way (qemu-img, debugfs),
independently of libguestfs. An md RAID1 pair is the exception: the host kernel has no md
driver, so that one is built inside a libguestfs appliance (md_raid1_disks)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile

from dataclasses import dataclass

from agent import protocol as P
from agent.server.convert.guestfs import Accel, Guest
from agent.server.receive.receiver import Receiver
from agent.runcmd import run

MiB = 1 << 20
DEBIAN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "debian_disk.sh")


def debian_disk(base: str, cache_dir: str, firmware: str = "bios", layout: str = "plain",
                network: str = "eth0-rule-dhcp", modules: str = "most") -> str:
    """The bootable Debian 12 disk of debian_disk.sh (``firmware`` bios: MBR + GRUB pc; uefi: GPT
    + ESP + GRUB EFI in EFI/debian only), built from ``base`` (the live ISO build's debootstrap
    tarball), cached in ``cache_dir`` under the script's own digest: a changed script builds a
    new disk instead of reusing one made by an older version. ``layout`` lvm (bios only): root
    on LV ccvm/root, the disk with /boot and an empty PV partition, the root filesystem beside it
    as DISK.rootfs. ``network``: eth0-rule-dhcp (a MAC-bound udev rule naming eth0, DHCP) or
    ens3-static (the e1000's slot name, a static address); ``modules``: most, or list (a
    host-only initramfs without virtio)."""
    with open(DEBIAN_SCRIPT, "rb") as f:
        tag = hashlib.sha256(f.read()).hexdigest()[:12]
    os.makedirs(cache_dir, exist_ok=True)
    kind = "-".join([firmware] + [v for v, default in ((layout, "plain"), (network, "eth0-rule-dhcp"),
                                                       (modules, "most")) if v != default])
    disk = os.path.join(cache_dir, f"debian12-{kind}-{tag}.raw")
    # Two xdist workers may ask for the same disk at once: the script writes DISK.tmp and
    # renames it, and a second builder would truncate the first's DISK.tmp under it. One lock
    # file beside the cache per disk: the second waits, then finds the disk built and reuses it.
    with open(disk + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run(["sh", DEBIAN_SCRIPT, disk, base, firmware, layout, network, modules], timeout=1800,
            hint=f"building the Debian test disk ({kind}) failed")
    return disk


@dataclass(frozen=True)
class Sparse:
    """A file of `size` bytes that are all a hole (mke2fs -d keeps holes): a hostile guest's
    "config file" that costs the disk nothing and a whole-file reader `size` bytes of memory."""

    size: int


@dataclass(frozen=True)
class Link:
    """A symbolic link to `target`."""

    target: str


def ext4_disk(image: str, tree: dict[str, str | bytes | Sparse | Link], size_mib: int = 64,
              uuid: str | None = None) -> None:
    """A GPT disk with one ext4 partition (1 MiB .. end) holding `tree` (path -> text, bytes,
    Sparse or Link; a path may hold any byte but NUL and '/' in its names, a newline included)."""
    with open(image, "wb") as f:
        f.truncate(size_mib * MiB)
    run(["parted", "-s", image, "mklabel", "gpt", "mkpart", "root", "ext4", "1MiB", f"{size_mib - 1}MiB"])
    src = tempfile.mkdtemp(prefix="guesttree-")
    try:
        for rel, text in tree.items():
            path = os.path.join(src, rel.lstrip("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if isinstance(text, Link):
                os.symlink(text.target, path)
                continue
            with open(path, "wb" if isinstance(text, bytes) else "w") as f:
                if isinstance(text, Sparse):
                    f.truncate(text.size)
                else:
                    f.write(text)
        argv = ["mkfs.ext4", "-F", "-q", "-E", f"offset={MiB}", "-d", src]
        if uuid:
            argv += ["-U", uuid]
        run(argv + [image, f"{size_mib - 2}M"])
    finally:
        shutil.rmtree(src)


MD_MEMBER_GPT_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"    # "Linux RAID" partition type
SECTOR = 512


@dataclass(frozen=True)
class MdRaid1:
    """What md_raid1_disks made: names as the guest's own mdadm.conf and fstab know them."""

    array_uuid: str        # mdadm's form, 8:8:8:8 hex, as in the ARRAY line
    array_name: str        # the superblock's name (homehost:name)
    metadata: str          # superblock version, e.g. 1.2
    root_uuid: str         # the ext4 on the array
    swap_uuids: tuple[str, ...]   # the swap partition (p2) of each disk, in disk order
    mdadm_conf: str        # the /etc/mdadm/mdadm.conf written into the tree


def md_raid1_disks(images: tuple[str, str], tree: dict[str, str], accel: Accel, size_mib: int = 96,
                   swap_mib: int = 16, md_name: str = "srv01:0", array_device: str | None = "/dev/md0") -> MdRaid1:
    """Two raw disks as a Debian installer lays out a mirrored server: on each a GPT with p1 an
    md member ("Linux RAID" type) and p2 a swap partition; p1 + p1 an md RAID1 (mdadm's default
    metadata, 1.2) holding an ext4 filled with `tree` (path -> text) plus an
    /etc/mdadm/mdadm.conf with the array's ARRAY line, as `mdadm --detail --scan` writes it,
    naming the array `array_device` (None: no mdadm.conf, the array is found by its superblock).
    `md_name` is the superblock's homehost:name, as the installer of host srv01 writes it: the
    appliance (another host) then assembles it as a foreign array, /dev/md127, exactly as it
    does a real server's, so the guest's /dev/md0 is found only through its mdadm.conf.

    The host kernel has no md driver, so the array is made inside one libguestfs appliance (on
    qcow2 scratch images, which Guest opens) and then written out as raw images."""
    scratch = [f"{img}.build.qcow2" for img in images]
    for s in scratch:
        run(["qemu-img", "create", "-q", "-f", "qcow2", s, f"{size_mib}M"])
    total = size_mib * MiB // SECTOR
    p1 = (2048, total - swap_mib * MiB // SECTOR - 1)
    p2 = (p1[1] + 1, total - 34 - 1)        # the backup GPT takes the last 33 sectors
    try:
        with Guest(scratch, accel) as g:
            g.launch()
            devs = ["/dev/sda", "/dev/sdb"]
            for d in devs:
                g.fish("part-init", d, "gpt")
                g.fish("part-add", d, "p", str(p1[0]), str(p1[1]))
                g.fish("part-add", d, "p", str(p2[0]), str(p2[1]))
                g.fish("part-set-gpt-type", d, "1", MD_MEMBER_GPT_TYPE)
                g.fish("mkswap", f"{d}2")
            g.fish("md-create", md_name, " ".join(f"{d}1" for d in devs), "level:raid1")
            md = f"/dev/md/{md_name}"
            detail = dict(line.split(": ", 1) for line in g.fish("md-detail", md).splitlines() if ": " in line)
            g.fish("mkfs", "ext4", md)
            root_uuid = g.fish("vfs-uuid", md).strip()
            swaps = tuple(g.fish("vfs-uuid", f"{d}2").strip() for d in devs)
            conf = "" if array_device is None else ("# mdadm.conf\n#\n# Please refer to mdadm.conf(5) for information about this file.\n\n"
                    "HOMEHOST <system>\nMAILADDR root\n\n"
                    "# definitions of existing MD arrays\n"
                    f"ARRAY {array_device} metadata={detail['metadata']} name={detail['name']} "
                    f"UUID={detail['uuid']}\n")
            g.fish("mount", md, "/")
            for rel, text in {**tree, **({"etc/mdadm/mdadm.conf": conf} if conf else {})}.items():
                path = "/" + rel.lstrip("/")
                g.fish("mkdir-p", os.path.dirname(path))
                g.write(path, text)
            g.fish("umount-all")
            g.fish("sync")
        for s, img in zip(scratch, images):
            run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", s, img])
    finally:
        for s in scratch:
            if os.path.exists(s):
                os.unlink(s)
    return MdRaid1(detail["uuid"], detail["name"], detail["metadata"], root_uuid, swaps, conf)


def _write_stream(out, capture_id: str, disks: dict[str, str], source: dict | None = None) -> None:
    """The records the agent would send for these raw images, read and sent chunk by chunk
    (DATA records stay under the protocol's limit, and a 2 GiB disk is never all in memory)."""
    bs = P.DEFAULT_BLOCK_SIZE
    out.write(P.preamble())
    out.write(P.encode_json(P.T_HELLO, {"capture_id": capture_id, "format": "qcow2",
                                        "agent_version": "test", "disks": list(disks),
                                        **({"source": source} if source is not None else {})}))
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


def make_capture(root: str, capture_id: str, disks: dict[str, str], source: dict | None = None) -> str:
    """A complete capture dir made by the real receiver from these raw disk images (name -> path),
    so its manifest.json is exactly what coldclone-receive writes; `source`: the HELLO's source
    facts (the agent sends its hostname and the discovered inventory there)."""
    with tempfile.TemporaryFile(dir=root) as stream:
        _write_stream(stream, capture_id, disks, source)
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
