"""coldclone-convert on a server whose root is an md RAID1 over two disks (issue 12: "Multi-disk
servers (e.g. md RAID1 on two disks ...) convert as one guest").

Each disk: GPT, p1 a "Linux RAID" member, p2 swap; p1 + p1 an md RAID1 (metadata 1.2) holding
the ext4 root, built inside a libguestfs appliance (the host kernel has no md driver). The
guest names its root by the array (/dev/md0 in fstab and on the kernel line, the ARRAY line in
/etc/mdadm/mdadm.conf), and its swaps, resume= and device.map by /dev/sdX names; /srv is on a
second array, /dev/md1, whose disks were not captured. The array's superblock names homehost
srv01, so the appliance assembles it as a foreign array (/dev/md127), as it would a real
server's. The capture is made by the real receiver and converted with our fix-ups as one
guest. Then:
 - the evidence qcow2s are byte-identical (sha256) before and after;
 - md names are left alone (an md name is not a hardware position; rewriting it to a member's
   UUID would point the boot at half a mirror), while the sdX swap names become UUID=;
 - /srv (on the missing /dev/md1) is left unmounted with a warning, not a failed conversion;
 - the readiness report (made from the same tree) predicted exactly what was fixed, and says
   md-raid rather than calling root=/dev/md0 a hardware name;
 - the converted pair still IS a healthy RAID1: one read-only appliance over the two
   .kvm.qcow2 assembles the array with both members, and the root fs mounts and reads back.

Budget: three appliance launches (build, conversion, check), ~30-60 s each under TCG.
"""

import json
import os
import re
import subprocess
import time

import pytest

from agent import records
from agent.server.convert.guestfs import Guest, detect_accel
from agent.server.convert.model import Fix, prediction_gaps
from agent.choices import ConvertEngine
from agent.guestos.tree import inspect_tree
from tests.conftest import BIN, sha256_of
from agent.runcmd import run
from tests.testbed import guestdisk

pytestmark = pytest.mark.root

MAC = "00:25:90:ab:cd:ef"
FSTAB = """\
# /etc/fstab: static file system information.
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/md0    /      ext4   errors=remount-ro   0  1
/dev/sda2   none   swap   sw                  0  0
/dev/sdb2\tnone\tswap\tsw\t0\t0
/dev/md1    /srv   ext4   defaults,nofail     0  2
proc /proc proc defaults 0 0
"""
GRUB_CFG = """\
set default=0
insmod mdraid1x
menuentry 'Debian GNU/Linux' {
\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=/dev/md0 ro resume=/dev/sda2 quiet
\tinitrd\t/boot/initrd.img-6.1.0-18-amd64
}
"""
NET_RULES = ('# PCI device 0x8086:0x10d3 (e1000e)\n'
             f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC}", '
             'ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n')
OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
              'VERSION_ID="12"\nID=debian\n')
TREE = {
    "etc/os-release": OS_RELEASE,
    "etc/debian_version": "12.5\n",
    "etc/hostname": "srv01\n",
    "etc/fstab": FSTAB,
    "boot/grub/grub.cfg": GRUB_CFG,
    "boot/grub/device.map": "(hd0)\t/dev/sda\n(hd1)\t/dev/sdb\n",
    "etc/udev/rules.d/70-persistent-net.rules": NET_RULES,
    "bin/.keep": "", "sbin/.keep": "", "usr/bin/.keep": "", "var/.keep": "",
}


def write_tree(root, tree: dict[str, str]) -> str:
    for rel, text in tree.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return str(root)


def test_md_raid1_root_converts_as_one_guest(root, tmp_path):
    accel = detect_accel()
    t = time.monotonic()
    md = guestdisk.md_raid1_disks((str(tmp_path / "sda.img"), str(tmp_path / "sdb.img")), TREE, accel)
    print(f"building the md RAID1 pair: {time.monotonic() - t:.1f} s ({accel.name})")
    assert (md.metadata, md.array_name) == ("1.2", "srv01:0")
    cap = guestdisk.make_capture(root, "mdsrv01", {"sda": str(tmp_path / "sda.img"),
                                                   "sdb": str(tmp_path / "sdb.img")})
    os.unlink(tmp_path / "sda.img")
    os.unlink(tmp_path / "sdb.img")
    before = {n: sha256_of(os.path.join(cap, n)) for n in ("sda.qcow2", "sdb.qcow2")}

    t = time.monotonic()
    r = subprocess.run([os.path.join(BIN, "coldclone-convert"), cap, "--engine", "fixups"],
                       capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t
    print(r.stdout, r.stderr[-3000:], f"coldclone-convert (md RAID1, 2 x 96 MiB): {took:.1f} s", sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "converted: sda.kvm.qcow2, sdb.kvm.qcow2" in r.stdout

    # The evidence is untouched, byte for byte.
    assert {n: sha256_of(os.path.join(cap, n)) for n in before} == before

    c = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    print("timings:", json.dumps(c["timings"]), "seconds:", c["seconds"])
    assert c["result"] == "converted" and c["engine"] == "fixups"
    assert c["os"]["distro"] == "debian" and c["os"]["type"] == "linux"
    # Inspection found the OS on the array (the appliance's name for it), with / on it.
    assert c["os"]["root"].startswith("/dev/md"), c["os"]
    # The array is foreign to the appliance (homehost srv01), so it is /dev/md127 there: the
    # guest's /dev/md0 was found through its mdadm.conf ARRAY line. /dev/md1 (an array whose
    # disks were not captured) is passed through by inspection as it is; conversion leaves /srv
    # unmounted and says so instead of failing on guestfish's mount error.
    assert c["os"]["root"] == "/dev/md127"
    assert sorted(c["os"]["mountpoints"]) == [["/", "/dev/md127"], ["/srv", "/dev/md1"]]
    assert [i["image"] for i in c["images"]] == ["sda.kvm.qcow2", "sdb.kvm.qcow2"]
    assert c["warnings"] == [
        "/srv not mounted for the fix-ups: its device /dev/md1 (the guest's fstab) is none of the "
        "filesystems on the captured disks; its files were not checked, and the converted guest "
        "mounts it only if that device is attached"]
    fixes = [records.decode(f, Fix, "fix") for f in c["fixes"]]
    got = sorted((f.kind.value, f.path, f.before, f.after) for f in fixes)
    sw_a, sw_b = (f"UUID={u}" for u in md.swap_uuids)
    assert got == sorted([
        ("fstab-device-name", "/etc/fstab", "/dev/sda2   none   swap   sw                  0  0",
         f"{sw_a}   none   swap   sw                  0  0"),
        ("fstab-device-name", "/etc/fstab", "/dev/sdb2\tnone\tswap\tsw\t0\t0", f"{sw_b}\tnone\tswap\tsw\t0\t0"),
        ("kernel-resume-device", "/boot/grub/grub.cfg", "resume=/dev/sda2", f"resume={sw_a}"),
        ("grub-device-map", "/boot/grub/device.map", "(hd0)\t/dev/sda", "(hd0)\t/dev/vda"),
        ("grub-device-map", "/boot/grub/device.map", "(hd1)\t/dev/sdb", "(hd1)\t/dev/vdb"),
        ("udev-net-rule-mac", "/etc/udev/rules.d/70-persistent-net.rules", NET_RULES.splitlines()[1],
         "# coldclone-convert: bound to the old MAC: " + NET_RULES.splitlines()[1]),
    ])
    # No fix touched an md name.
    assert not [f for f in fixes if "/dev/md" in f.before]

    # The readiness report of the same tree predicted these fixes and no others; it reports the
    # array as md-raid, not root=/dev/md0 as a hardware name of the boot loader.
    src = inspect_tree(write_tree(tmp_path / "tree", {**TREE, "etc/mdadm/mdadm.conf": md.mdadm_conf}),
                       disk_count=2)
    ids = {f.id for f in src.findings}
    assert "md-raid" in ids and "bootloader-root-device" not in ids
    md_finding = next(f for f in src.findings if f.id == "md-raid")
    assert md_finding.evidence == ["/etc/fstab:3: /dev/md0 /", "/etc/fstab:6: /dev/md1 /srv"]
    promised = [f.id for f in src.findings if f.conversion]
    gaps = prediction_gaps(promised, ConvertEngine.FIXUPS, fixes)
    # The initramfs' virtio drivers are virt-v2v's part, which --engine fixups does not run.
    assert gaps.unpredicted == () and set(gaps.unanswered) <= {"initramfs-virtio"}, gaps

    # The converted pair is still one healthy RAID1 with the root filesystem on it.
    kvm = [os.path.join(cap, "sda.kvm.qcow2"), os.path.join(cap, "sdb.kvm.qcow2")]
    t = time.monotonic()
    with Guest(kvm, accel, readonly=True) as g:
        g.launch()
        arrays = g.fish("list-md-devices").split()
        assert len(arrays) == 1, arrays
        detail = dict(line.split(": ", 1) for line in g.fish("md-detail", arrays[0]).splitlines() if ": " in line)
        assert (detail["level"], detail["devices"], detail["metadata"], detail["uuid"]) == \
            ("raid1", "2", "1.2", md.array_uuid), detail
        stat = g.fish("md-stat", arrays[0])
        # both members, partition 1 of two different disks (the appliance's letters follow its
        # probe order: sda1 and sdc1 in one CI run)
        members = re.findall(r"mdstat_device: /dev/(sd[a-z]+)1\b", stat)
        assert len(members) == 2 and len(set(members)) == 2, stat
        assert g.fish("vfs-uuid", arrays[0]).strip() == md.root_uuid
        g.fish("mount-ro", arrays[0], "/")
        assert g.read("/etc/os-release") == OS_RELEASE
        assert md.mdadm_conf in g.read("/etc/mdadm/mdadm.conf")
        fstab = g.read("/etc/fstab")
        grub = g.read("/boot/grub/grub.cfg")
        rules = g.read("/etc/udev/rules.d/70-persistent-net.rules")
        devmap = g.read("/boot/grub/device.map")
    print(f"checking the converted array: {time.monotonic() - t:.1f} s")
    assert fstab == FSTAB.replace("/dev/sda2   none", f"{sw_a}   none").replace("/dev/sdb2\tnone", f"{sw_b}\tnone")
    assert "/dev/md0    /      ext4" in fstab and "/dev/md1    /srv" in fstab
    assert grub == GRUB_CFG.replace("resume=/dev/sda2", f"resume={sw_a}")
    assert "root=/dev/md0 ro" in grub
    assert rules.splitlines()[1].startswith("# coldclone-convert: bound to the old MAC: SUBSYSTEM")
    assert devmap == "(hd0)\t/dev/vda\n(hd1)\t/dev/vdb\n"
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sda.kvm.qcow2", "sda.qcow2",
                                       "sdb.kvm.qcow2", "sdb.qcow2"]


def test_md_root_without_mdadm_conf_converts(root, tmp_path):
    """No mdadm.conf (the initramfs assembles the array from its superblock): inspection cannot
    map the guest's /dev/md0 to the appliance's /dev/md127 and reports / on /dev/md0, a device
    the appliance does not have. Conversion mounts / on the root inspection found instead of
    failing on guestfish's mount error. Two appliance launches (build, conversion)."""
    accel = detect_accel()
    images = (str(tmp_path / "sda.img"), str(tmp_path / "sdb.img"))
    md = guestdisk.md_raid1_disks(images, TREE, accel, array_device=None)
    assert md.mdadm_conf == ""
    cap = guestdisk.make_capture(root, "mdsrv02", dict(zip(("sda", "sdb"), images)))
    before = {n: sha256_of(os.path.join(cap, n)) for n in ("sda.qcow2", "sdb.qcow2")}
    t = time.monotonic()
    # --overlay: each converted image is staged in the run's own directory and moved beside the
    # evidence, so its backing file must be named from there
    r = subprocess.run([os.path.join(BIN, "coldclone-convert"), cap, "--engine", "fixups", "--overlay"],
                       capture_output=True, text=True, timeout=900)
    print(f"coldclone-convert (md RAID1, no mdadm.conf): {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "converted: sda.kvm.qcow2, sdb.kvm.qcow2 (6 fix-ups)" in r.stdout
    assert {n: sha256_of(os.path.join(cap, n)) for n in before} == before
    for n in ("sda", "sdb"):
        info = json.loads(run(["qemu-img", "info", "--output=json", os.path.join(cap, f"{n}.kvm.qcow2")]).stdout)
        assert (info["backing-filename"], info["backing-filename-format"]) == (f"{n}.qcow2", "qcow2")
        run(["qemu-img", "check", "-q", os.path.join(cap, f"{n}.kvm.qcow2")])
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sda.kvm.qcow2", "sda.qcow2",
                                       "sdb.kvm.qcow2", "sdb.qcow2"]
    c = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    assert c["os"]["root"] == "/dev/md127"
    assert sorted(c["os"]["mountpoints"]) == [["/", "/dev/md0"], ["/srv", "/dev/md1"]]
    assert [w.split(":")[0] for w in c["warnings"]] == ["/srv not mounted for the fix-ups"]
    assert not [f for f in c["fixes"] if "/dev/md" in f["before"]]
