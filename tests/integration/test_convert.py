"""coldclone-convert on real disks under libguestfs (TCG where KVM does not work).

A two-disk "Debian server" (GPT, ext4 root with /etc/os-release, fstab and grub.cfg by
/dev/sdX names, a MAC-bound udev rule, an ifcfg with HWADDR, a NetworkManager keyfile with a
mac-address; /var on the second disk) is made into a complete capture by the real receiver,
converted with our fix-ups as one guest, and the converted files are read back with debugfs
(not libguestfs). The evidence qcow2s are byte-identical before and after. The same guest is
hostile where it may be (issue 19): sparse "configuration files" of 200 and 300 MiB and file
names holding a newline are left alone and said, with the converter's memory bounded. A disk
with no OS is refused with `not converted: ...` and exit 7, and its capture stays complete and
verified.

Budget: one libguestfs appliance launch per conversion (two in this module; ~20-40 s each
under TCG).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from agent.server.convert.convert import CopyMethod, read_capture, stage_image
from agent.server.receive.store import Store
from tests.conftest import BIN, REPO, sha256_of
from tests.testbed import guestdisk
from tests.testbed.guestdisk import Link, Sparse

pytestmark = pytest.mark.root

ROOT_UUID = "3f1d2c4b-5a6e-4f70-8192-a3b4c5d6e7f8"
VAR_UUID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
MAC = "00:25:90:ab:cd:ef"

FSTAB = """\
# /etc/fstab: static file system information.
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/sda1   /      ext4   errors=remount-ro   0  1
/dev/sdb1\t/var\text4\tdefaults\t0\t2   # the data disk
proc /proc proc defaults 0 0
"""
GRUB_CFG = """\
set default=0
menuentry 'Debian GNU/Linux' {
\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro  quiet
\tinitrd\t/boot/initrd.img-6.1.0-18-amd64
}
"""
NET_RULES = ('# PCI device 0x8086:0x10d3 (e1000e)\n'
             f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC}", '
             'ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n')
IFCFG = f"DEVICE=eth0\nHWADDR={MAC.upper()}\nBOOTPROTO=dhcp\nONBOOT=yes\n"
NM = f"[connection]\nid=eth0\ntype=ethernet\n\n[ethernet]\nmac-address={MAC}\n\n[ipv4]\nmethod=auto\n"
INTERFACES = f"auto eth0\niface eth0 inet dhcp\n\thwaddress ether {MAC}\n"
DEVICE_MAP = "(hd0)\t/dev/sda\n(hd1)\t/dev/sdb\n"
TREE = {
    "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                      'VERSION_ID="12"\nID=debian\n',
    "etc/debian_version": "12.5\n",
    "etc/hostname": "srv01\n",
    "etc/fstab": FSTAB,
    "boot/grub/grub.cfg": GRUB_CFG,
    "etc/udev/rules.d/70-persistent-net.rules": NET_RULES,
    "etc/sysconfig/network-scripts/ifcfg-eth0": IFCFG,
    "etc/NetworkManager/system-connections/eth0.nmconnection": NM,
    "etc/network/interfaces": INTERFACES,
    "boot/grub/device.map": DEVICE_MAP,
    "bin/.keep": "", "sbin/.keep": "", "usr/bin/.keep": "", "var/.keep": "",
}


MiB = 1 << 20
# What a hostile guest holds where the fix-ups look (issue 19).
HOSTILE = {
    # where the fix-ups expect small configuration files: sparse, costing the disk nothing
    "etc/default/grub": Sparse(200 * MiB),
    "etc/sysconfig/network-scripts/ifcfg-eth1": Sparse(300 * MiB),
    # file names with a newline: glob-expand printed them on two lines, and the second half
    # (a relative path) made guestfish fail and exit, the conversion with it
    "etc/sysconfig/network-scripts/ifcfg-eth2\nrelative": IFCFG.replace("eth0", "eth2"),
    "etc/systemd/system/multi-user.target.wants/smartd.service\nssh.service":
        Link("/lib/systemd/system/ssh.service"),
    # and ordinary hardware services' links beside them, removed as usual (S links, not K)
    "etc/systemd/system/multi-user.target.wants/smartd.service": Link("/lib/systemd/system/smartd.service"),
    "etc/rc3.d/S20gpm": Link("../init.d/gpm"),
    "etc/rc3.d/K20gpm": Link("../init.d/gpm"),
}


def convert(capture, *args, timeout=900):
    return subprocess.run([os.path.join(BIN, "coldclone-convert"), capture, *args],
                          capture_output=True, text=True, timeout=timeout)


# The converter's own peak RSS: VmHWM, the high-water mark of the memory of the process that
# runs it, made fresh at its exec (ru_maxrss would carry pytest's own from before the exec);
# not its children's, qemu-img or the guestfish server, whose memory does not follow the guest.
MEASURE = ("import sys\n"
           "from agent.server.convert.cli import main\n"
           "rc = main(sys.argv[1:])\n"
           "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
           "print(f'CONVERTER-VMHWM-KIB {hwm}')\n"
           "sys.exit(rc)\n")


def convert_measured(capture, *args, timeout=900):
    """coldclone-convert's main run in a process of its own; (result, its peak RSS in bytes)."""
    r = subprocess.run([sys.executable, "-c", MEASURE, capture, *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    line = next(l for l in r.stdout.splitlines() if l.startswith("CONVERTER-VMHWM-KIB "))
    return r, int(line.split()[1]) * 1024


def test_convert_two_disk_linux_with_fixups(root, tmp_path):
    guestdisk.ext4_disk(str(tmp_path / "sda.img"), {**TREE, **HOSTILE}, uuid=ROOT_UUID)
    guestdisk.ext4_disk(str(tmp_path / "sdb.img"), {"log/messages": "old log\n"}, uuid=VAR_UUID)
    cap = guestdisk.make_capture(root, "srv01", {"sda": str(tmp_path / "sda.img"),
                                                 "sdb": str(tmp_path / "sdb.img")})
    before = {n: sha256_of(os.path.join(cap, n)) for n in ("sda.qcow2", "sdb.qcow2")}
    manifest_before = json.load(open(os.path.join(cap, "manifest.json")))

    # Copy vs overlay for the stage the fixes are written to (measured, reported by -s).
    disks = read_capture(cap).manifest.disks
    capdir = Store(root).open_capture("srv01")
    work = tempfile.mkdtemp(dir=cap, prefix="measure-")
    for method in (CopyMethod.COPY, CopyMethod.OVERLAY):
        t = time.monotonic()
        stage_image(capdir, disks[0], os.path.join(work, "sda.qcow2"), method)
        print(f"stage by {method.value}: {time.monotonic() - t:.3f} s")
        os.unlink(os.path.join(work, "sda.qcow2"))
    os.rmdir(work)

    t = time.monotonic()
    r, rss = convert_measured(cap, "--engine", "fixups")
    took = time.monotonic() - t
    print(r.stdout, r.stderr[-3000:], f"coldclone-convert: {took:.1f} s, peak RSS {rss / MiB:.0f} MiB", sep="\n")
    assert r.returncode == 0, r.stderr
    assert "converted: sda.kvm.qcow2, sdb.kvm.qcow2" in r.stdout
    # 624 MiB with the converter before issue 19 and the two sparse files; 25 MiB for a guest
    # without them (measured: VmHWM of the same process)
    assert rss < 96 * MiB, rss

    # The evidence is untouched, byte for byte, and the receiver's manifest is kept as it was.
    assert {n: sha256_of(os.path.join(cap, n)) for n in before} == before
    m = json.load(open(os.path.join(cap, "manifest.json")))
    assert {k: v for k, v in m.items() if k != "conversion"} == manifest_before
    c = m["conversion"]
    assert c["result"] == "converted" and c["engine"] == "fixups"
    assert c["accel"] in ("kvm", "tcg") and c["accel_reason"]
    assert c["engine_versions"]["libguestfs"].startswith("guestfish")
    assert c["os"]["distro"] == "debian" and c["os"]["type"] == "linux"
    assert [i["image"] for i in c["images"]] == ["sda.kvm.qcow2", "sdb.kvm.qcow2"]
    assert all(i["method"] == "copy" for i in c["images"])
    kinds = sorted((f["kind"], f["path"]) for f in c["fixes"])
    assert kinds == sorted([
        ("fstab-device-name", "/etc/fstab"), ("fstab-device-name", "/etc/fstab"),
        ("kernel-root-device", "/boot/grub/grub.cfg"),
        ("udev-net-rule-mac", "/etc/udev/rules.d/70-persistent-net.rules"),
        ("ifcfg-hwaddr", "/etc/sysconfig/network-scripts/ifcfg-eth0"),
        ("networkmanager-mac-address", "/etc/NetworkManager/system-connections/eth0.nmconnection"),
        ("interfaces-hwaddress", "/etc/network/interfaces"),
        ("grub-device-map", "/boot/grub/device.map"), ("grub-device-map", "/boot/grub/device.map"),
        # the hardware services' start links (S only, not K); not the one whose name holds a newline
        ("hardware-service-disabled", "/etc/rc3.d/S20gpm"),
        ("hardware-service-disabled", "/etc/systemd/system/multi-user.target.wants/smartd.service"),
    ])
    # what was left alone, and why: too large to be a configuration file, or a name with a newline
    warnings = "\n".join(c["warnings"])
    for path, size in (("/etc/default/grub", "200.0 MiB"),
                       ("/etc/sysconfig/network-scripts/ifcfg-eth1", "300.0 MiB")):
        assert f"{path} left alone: {size}, more than the 4.0 MiB a configuration file may hold" in warnings
    for odd in ("'/etc/sysconfig/network-scripts/ifcfg-eth2\\nrelative'",
                "'/etc/systemd/system/multi-user.target.wants/smartd.service\\nssh.service'"):
        assert f"{odd} left alone: its name holds a control character" in warnings, warnings
    print("timings:", json.dumps(c["timings"]), "seconds:", c["seconds"])
    log = open(os.path.join(cap, "conversion.log")).read()
    assert "fixed fstab-device-name: /etc/fstab:3" in log

    # The converted guest's files, read back by debugfs from the converted qcow2.
    kvm = os.path.join(cap, "sda.kvm.qcow2")
    fstab = guestdisk.read_ext4_file(kvm, "/etc/fstab", str(tmp_path))
    assert fstab == FSTAB.replace("/dev/sda1   /", f"UUID={ROOT_UUID}   /").replace(
        "/dev/sdb1\t/var", f"UUID={VAR_UUID}\t/var")
    grub = guestdisk.read_ext4_file(kvm, "/boot/grub/grub.cfg", str(tmp_path))
    assert f"root=UUID={ROOT_UUID} ro  quiet" in grub and "/dev/sda" not in grub
    rules = guestdisk.read_ext4_file(kvm, "/etc/udev/rules.d/70-persistent-net.rules", str(tmp_path))
    assert rules.splitlines()[1].startswith("# coldclone-convert: bound to the old MAC: SUBSYSTEM")
    ifcfg = guestdisk.read_ext4_file(kvm, "/etc/sysconfig/network-scripts/ifcfg-eth0", str(tmp_path))
    assert f"\n# coldclone-convert: MAC of the old hardware: HWADDR={MAC.upper()}\n" in ifcfg
    nm = guestdisk.read_ext4_file(kvm, "/etc/NetworkManager/system-connections/eth0.nmconnection",
                                  str(tmp_path))
    assert f"# coldclone-convert: MAC of the old hardware: mac-address={MAC}" in nm
    interfaces = guestdisk.read_ext4_file(kvm, "/etc/network/interfaces", str(tmp_path))
    assert interfaces == INTERFACES.replace("\thwaddress", "# coldclone-convert: MAC of the old hardware: \thwaddress")
    assert guestdisk.read_ext4_file(kvm, "/boot/grub/device.map", str(tmp_path)) == "(hd0)\t/dev/vda\n(hd1)\t/dev/vdb\n"
    # the file with the odd name is as it was
    assert guestdisk.read_ext4_file(kvm, '"/etc/sysconfig/network-scripts/ifcfg-eth2\nrelative"',
                                    str(tmp_path)) == IFCFG.replace("eth0", "eth2")
    # The second disk's data is there, unchanged.
    assert guestdisk.read_ext4_file(os.path.join(cap, "sdb.kvm.qcow2"), "/log/messages",
                                    str(tmp_path)) == "old log\n"
    # No staging files are left behind.
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sda.kvm.qcow2", "sda.qcow2",
                                       "sdb.kvm.qcow2", "sdb.qcow2"]


def test_disk_without_os_is_not_converted(root, tmp_path):
    guestdisk.ext4_disk(str(tmp_path / "data.img"), {"payroll/2024.csv": "a,b\n"})
    cap = guestdisk.make_capture(root, "data01", {"sdc": str(tmp_path / "data.img")})
    before = sha256_of(os.path.join(cap, "sdc.qcow2"))
    r = convert(cap, "--engine", "fixups")
    assert r.returncode == 7, r.stdout + r.stderr
    assert "not converted: no operating system found on the captured disks" in r.stdout
    m = json.load(open(os.path.join(cap, "manifest.json")))
    assert m["status"] == "complete" and m["disks"][0]["verified"]["disk_digest"] is True
    assert m["conversion"]["result"] == "not_converted"
    assert m["conversion"]["message"].startswith("not converted: no operating system found")
    assert sha256_of(os.path.join(cap, "sdc.qcow2")) == before
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sdc.qcow2"]


def test_refuses_what_is_not_a_complete_capture(root, tmp_path):
    r = convert(str(tmp_path))
    assert r.returncode == 2 and "holds no manifest.json" in r.stderr
    partial = tmp_path / "x.partial"
    partial.mkdir()
    r = convert(str(partial))
    assert r.returncode == 2 and "unfinished capture" in r.stderr
    assert not os.listdir(partial)


def test_receiver_convert_queues_the_conversion(root, tmp_path):
    """`coldclone-receive --convert --network keep`: the receiver answers `complete` and exits
    at once; the conversion runs detached after it, with the receiver's --network, and records
    its outcome (and that policy) in the manifest."""
    from tests.streams import capture_stream

    guestdisk.ext4_disk(str(tmp_path / "d.img"), {"notes.txt": "no OS here\n"}, size_mib=32)
    stream = capture_stream("queued01", {"sdd": open(tmp_path / "d.img", "rb").read()})
    t = time.monotonic()
    r = subprocess.run([os.path.join(BIN, "coldclone-receive"), "--root", root, "--convert", "--network", "keep"],
                       input=stream, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert time.monotonic() - t < 30          # it did not wait for the appliance
    cap = os.path.join(root, "queued01")
    assert [json.loads(l)["event"] for l in r.stdout.splitlines()][-1] == "complete"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        m = json.load(open(os.path.join(cap, "manifest.json")))
        if "conversion" in m:
            break
        time.sleep(2)
    assert m["conversion"]["result"] == "not_converted", open(os.path.join(cap, "conversion.out")).read()
    assert m["conversion"]["network"]["policy"] == "keep"
    assert m["status"] == "complete"
    assert "not converted: no operating system" in open(os.path.join(cap, "conversion.out")).read()


def test_host_only_initramfs_without_a_tool_to_rebuild_it_is_refused(root, tmp_path):
    """--engine fixups on a guest whose initramfs has no virtio disk driver and no
    update-initramfs or dracut to add one: refused before any image is written (it would stop
    in the initramfs on virtio), pointing to --engine virt-v2v; the readiness report of the same
    tree predicted the problem."""
    from agent.guestos.tree import inspect_tree
    from tests.testbed import sourceos

    kver = sourceos.KVER
    tree = {**{k: v for k, v in TREE.items() if not k.startswith(("etc/sysconfig", "etc/NetworkManager"))},
            f"boot/vmlinuz-{kver}": "not a kernel\n", f"boot/initrd.img-{kver}": sourceos.sata_initramfs()}
    src = tmp_path / "tree"
    for rel, data in tree.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    assert inspect_tree(str(src)).finding("initramfs-virtio") is not None
    img = str(tmp_path / "sda.img")
    guestdisk.ext4_disk(img, tree, uuid=ROOT_UUID)
    cap = guestdisk.make_capture(root, "hostonly01", {"sda": img})
    before = sha256_of(os.path.join(cap, "sda.qcow2"))
    r = convert(cap, "--engine", "fixups")
    assert r.returncode == 7, r.stdout + r.stderr[-3000:]
    c = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    assert c["result"] == "not_converted"
    assert c["message"] == (
        f"not converted: /boot/initrd.img-{kver} has no virtio disk driver (virtio virtio_net (missing virtio_pci, "
        f"virtio_blk, virtio_scsi)) and the guest has neither update-initramfs nor dracut to rebuild it: on virtio "
        f"it would stop in the initramfs; convert it with --engine virt-v2v")
    assert sha256_of(os.path.join(cap, "sda.qcow2")) == before
    assert sorted(os.listdir(cap)) == ["conversion.log", "manifest.json", "sda.qcow2"]


def test_status_reads_the_conversion_verdicts(root):
    """`coldclone-server status` over this module's root: what each conversion above came to, read
    from the manifests' `conversion` sections (a capture with no OS stays a verified capture)."""
    r = subprocess.run([os.path.join(BIN, "coldclone-server"), "status", "--root", root, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = {s["capture_id"]: s for s in json.loads(r.stdout)}
    if "srv01" in got:        # run with the test that converts it
        assert got["srv01"]["state"] == "converted" and got["srv01"]["detail"].startswith("converted: sda.kvm")
    for cid in ("data01", "queued01"):
        if cid in got:
            assert got[cid]["state"] == "verified", got[cid]
            assert got[cid]["detail"].startswith("not converted: no operating system"), got[cid]
    assert got, "no capture in the module's root: run the module, not this test alone"
