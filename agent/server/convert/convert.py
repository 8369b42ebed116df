"""Convert a verified capture into a guest that boots on KVM virtio.

The verified images stay untouched (they are the evidence): every write goes to a separate
image beside them, `<disk>.kvm.qcow2`, and the result is recorded in the `conversion` section
of manifest.json (written atomically, like the receiver writes it). A run works in a directory
of its own inside the capture (`convert-XXXXXXXX.tmp`, made fresh, removed at its end) and
removes nothing else: the converted images are renamed into place only when the whole
conversion succeeded (replacing an earlier conversion's), so a failed run leaves the capture
as it found it.

The pipeline, one libguestfs appliance of ours per conversion:
 1. stage: a qcow2 per disk in the run's directory (an overlay backed by the evidence, which
    qemu opens read-only, or a standalone copy);
 2. our fix-ups (agent.server.convert.fixes) through one guestfish handle holding every disk of the
    capture, so /var on a second disk or an md RAID1 is one guest; inspection first: a disk with
    no OS is `not converted`, and the capture stays as verified;
 3. engine virt-v2v: virt-v2v reads the fixed stage and writes the converted disks (virtio
    drivers in the initramfs, its own remapping); engine fixups: the stage is the result.
Our fixes go before virt-v2v so that it sees UUID= names (it cannot rewrite a hand-written
grub.cfg, and warns "could not determine a way to update the configuration of Grub2").
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from xml.sax.saxutils import quoteattr

from ...errors import ColdcloneError, CommandError, ServerError
from ...manifest import MANIFEST
from ...units import human_bytes
from ..receive import image as qimage
from ..receive.convqueue import conversion_slot, default_max_conversions
from ..receive.manifest import CaptureDirectory, ManifestDisk, ManifestError
from ..receive.store import FAILURE, CaptureDir, Store, converted_image_name, free_bytes
from ...runcmd import run
from . import fixes as F
from .guestfs import Accel, Guest, Skipped, detect_accel, tool_version
from .model import Conversion, CopyMethod, Fix, GuestOS, ImageOut, Outcome
from ...choices import ConvertEngine

log = logging.getLogger("coldclone.convert")

class NotConvertible(ColdcloneError):
    """The capture is fine, but what is on it is not a guest we can convert (no OS ...)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_capture(path: str) -> CaptureDirectory:
    """A complete, verified capture that can be converted in place; anything else is refused
    with what is wrong and what to do, before anything is written."""
    capdir = CaptureDirectory.load(path, purpose="converted")
    check_output_names(capdir)
    return capdir


def check_output_names(capdir: CaptureDirectory) -> None:
    """No converted image may take the name of a file the capture holds: a capture made before
    the receiver refused dotted disk names (store.validate_disk_name) can have disks `sda` and
    `sda.kvm`, whose verified sda.kvm.qcow2 is where sda's converted image would go."""
    held = {d.image: d.name for d in capdir.manifest.disks}
    for d in capdir.manifest.disks:
        out = converted_image_name(d.name)
        if out in held or out in (MANIFEST, FAILURE):
            whose = f"the verified image of disk {held[out]!r}" if out in held else "the capture's own record"
            raise ManifestError(
                f"{capdir.path}: disk {d.name!r} would be converted to {out}, which is {whose}: "
                f"converting would overwrite the evidence, so nothing was done. The capture predates "
                f"the rule that disk names hold no '.'; convert a copy in which that disk's files "
                f"and manifest entry are renamed, or capture again")


# --- staging ----------------------------------------------------------------------------------

def stage_image(cap: CaptureDir, disk: ManifestDisk, dest: str, method: CopyMethod) -> None:
    """A writable image of one disk at `dest` (a new file in the run's own directory); the
    evidence is only read: qemu-img convert reads it, and an overlay's backing file is opened
    read-only."""
    src = cap.file_path(disk.image)
    if method is CopyMethod.OVERLAY:
        # A backing name relative to the overlay, so the capture directory can be moved as a whole
        # (renamed beside the evidence at the end, `qemu-img rebase -u` names it from there).
        backing = os.path.relpath(src, os.path.dirname(dest))
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk.format, "-b", backing, dest])
    elif disk.format == "raw":
        qimage.convert_to_qcow2(src, dest)
    else:
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", src, dest])


# --- the run's own files --------------------------------------------------------------------

WORK_PREFIX, WORK_SUFFIX = "convert-", ".tmp"
# What a conversion writes besides its images (the stage's fix-ups, virt-v2v's own scratch
# files), and what a partly filled filesystem must still hold after them.
WORK_MARGIN = 64 << 20


class NoSpace(ColdcloneError):
    """The capture's filesystem cannot hold what the conversion writes."""


def space_needed(cap: CaptureDir, disks: list[ManifestDisk], method: CopyMethod) -> int:
    """Bytes the conversion writes into the capture's filesystem: a standalone image per disk
    (a copy, or virt-v2v's output) about as large as the evidence's allocated bytes, an overlay
    only what the fix-ups change; and the margin."""
    if method is CopyMethod.OVERLAY:
        return WORK_MARGIN
    return WORK_MARGIN + sum(os.stat(d.image, dir_fd=cap.fd).st_blocks * 512 for d in disks)


def check_space(cap: CaptureDir, needed: int) -> None:
    free = free_bytes(cap.path)
    if free < needed:
        raise NoSpace(f"not enough space in {cap.path}: the conversion needs about {human_bytes(needed)} "
                      f"(the converted images are about as large as the verified ones, plus "
                      f"{human_bytes(WORK_MARGIN)} of work space) and {human_bytes(free)} is free; free "
                      f"space on that filesystem (or move the capture to a larger one) and convert again")


def out_of_space(e: BaseException, cap: CaptureDir, needed: int) -> str | None:
    """The message for a step that failed because the filesystem filled up meanwhile."""
    said = e.stderr if isinstance(e, CommandError) else str(e)
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in said \
            or "Disk quota exceeded" in said:
        return (f"the filesystem of {cap.path} filled up during the conversion (it needs about "
                f"{human_bytes(needed)}): {e}; free space there and convert again")
    return None


# --- fix-ups ------------------------------------------------------------------------------------

# Files holding device names, and the function that fixes each. Globs are expanded in the guest.
DEVICE_FILES = (
    ("/etc/fstab", "fstab"),
    ("/etc/crypttab", "crypttab"),
    ("/boot/grub/grub.cfg", "kernel"),
    ("/boot/grub2/grub.cfg", "kernel"),
    ("/boot/grub/menu.lst", "kernel"),      # GRUB legacy (Debian/SUSE); a symlink on RHEL: skipped
    ("/boot/grub/grub.conf", "kernel"),     # GRUB legacy (RHEL 5/6)
    ("/boot/efi/EFI/*/grub.cfg", "kernel"),
    ("/etc/default/grub", "kernel"),
    ("/etc/default/grub.d/*.cfg", "kernel"),
    ("/etc/initramfs-tools/conf.d/resume", "kernel"),
    ("/boot/grub/device.map", "devmap"),
    ("/boot/grub2/device.map", "devmap"),
)
NET_FILES = (
    ("/etc/udev/rules.d/70-persistent-net.rules", "udev"),
    ("/etc/sysconfig/network-scripts/ifcfg-*", "ifcfg"),
    ("/etc/sysconfig/network/ifcfg-*", "ifcfg"),
    ("/etc/NetworkManager/system-connections/*", "nm"),
    ("/etc/network/interfaces", "interfaces"),
    ("/etc/network/interfaces.d/*", "interfaces"),
)
SERVICE_LINKS = ("/etc/systemd/system/*.wants/*", "/etc/rc[2-5].d/S*")


def _fix_text(kind: str, text: str, path: str, dmap: F.DeviceMap) -> F.FixResult:
    if kind == "fstab":
        return F.fix_fstab(text, dmap, path)
    if kind == "crypttab":
        return F.fix_crypttab(text, dmap, path)
    if kind == "kernel":
        return F.fix_kernel_args(text, dmap, path)
    if kind == "udev":
        return F.fix_net_rules(text, path)
    if kind == "ifcfg":
        return F.fix_ifcfg(text, path) if not path.endswith(("~", ".bak", ".orig", ".rpmsave", ".rpmnew")) \
            else F.FixResult(text)
    if kind == "nm":
        return F.fix_nm_keyfile(text, path)
    if kind == "interfaces":
        return F.fix_interfaces(text, path)
    if kind == "devmap":
        return F.fix_device_map(text, path)
    raise ValueError(kind)


def apply_fixes(guest: Guest, dmap: F.DeviceMap) -> tuple[list[Fix], list[str]]:
    """Every fix-up on the mounted guest; returns the fixes made and what was left alone."""
    fixes: list[Fix] = []
    warnings: list[str] = []
    for pattern, kind in DEVICE_FILES + NET_FILES:
        paths, skipped = guest.glob(pattern) if "*" in pattern else ([pattern], [])
        warnings += [str(s) for s in skipped]
        for path in paths:
            try:
                text = guest.read(path)
            except Skipped as e:
                warnings.append(str(e))
                continue
            if text is None:
                continue
            res = _fix_text(kind, text, path, dmap)
            warnings += res.warnings
            if res.changed:
                guest.write(path, res.text)
                for fx in res.fixes:
                    log.info("fixed %s", fx.render())
                fixes += res.fixes
    links = []
    for pattern in SERVICE_LINKS:
        paths, skipped = guest.glob(pattern)
        warnings += [str(s) for s in skipped]
        links += [p for p in paths if guest.is_symlink(p)]
    for fx in F.hardware_service_links(links):
        guest.remove(fx.path)
        log.info("fixed %s (%s)", fx.render(), fx.why)
        fixes.append(fx)
    for w in warnings:
        log.warning("%s", w)
    return fixes, warnings


def fix_guest(images: list[str], accel: Accel, timings: dict[str, float]) -> tuple[GuestOS, list[Fix], list[str]]:
    """One appliance over all the staged disks: inspect, refuse what has no OS, fix the rest."""
    t = time.monotonic()
    with Guest(images, accel) as g:
        g.launch()
        timings["appliance_launch_seconds"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        found = g.inspect()
        if not found:
            names = ", ".join(os.path.basename(i) for i in images)
            raise NotConvertible(f"no operating system found on the captured disks ({names}): libguestfs "
                                 f"inspection found no root filesystem; the capture itself is complete "
                                 f"and verified, boot or use it as a data disk")
        os_ = found[0]
        warnings = []
        if len(found) > 1:
            warnings.append(f"{len(found)} operating systems found ({', '.join(o.root for o in found)}); "
                            f"converted the first, {os_.root}")
        if os_.type != "linux":
            raise NotConvertible(f"the guest is {os_.type} ({os_.product}); coldclone-convert's fix-ups "
                                 f"handle Linux guests only")
        warnings += g.mount_os(os_)
        dmap = F.DeviceMap(tuple(g.volumes()))
        timings["inspect_seconds"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        fixes, more = apply_fixes(g, dmap)
        timings["fixups_seconds"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
    timings["appliance_shutdown_seconds"] = round(time.monotonic() - t, 3)
    return os_, fixes, warnings + more


# --- virt-v2v -----------------------------------------------------------------------------------

def libvirt_xml(name: str, images: list[str]) -> str:
    """The input description virt-v2v needs to take several disks as one guest (-i disk takes
    one); SATA targets, as the source server's disks were."""
    disks = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file={quoteattr(os.path.abspath(img))}/><target dev='sd{chr(ord('a') + i)}' bus='sata'/></disk>"
        for i, img in enumerate(images))
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>2048</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{disks}</devices></domain>\n")


# Tools virt-v2v 2.x runs at its very end (copying), which its Debian package does not pull in:
# without them a run fails after the whole (tens of minutes) conversion.
V2V_TOOLS = {"virt-v2v": "virt-v2v", "nbdkit": "nbdkit", "nbdcopy": "libnbd-bin",
             "nbdinfo": "libnbd-bin", "qemu-nbd": "qemu-utils"}


def v2v_missing_tools() -> list[str]:
    """'tool (Debian package)' for each tool virt-v2v needs that is not installed."""
    return [f"{tool} ({pkg})" for tool, pkg in V2V_TOOLS.items() if shutil.which(tool) is None]


def check_v2v_tools() -> None:
    """Refuse in a second, before any appliance, what would fail at virt-v2v's very end."""
    missing = v2v_missing_tools()
    if missing:
        raise CommandError(["virt-v2v"], None, f"virt-v2v cannot run here: missing {', '.join(missing)}; "
                                               f"install them (scripts/setup.sh lists them) or use --engine fixups")


def run_virt_v2v(cap: CaptureDir, work: str, staged: list[str], accel: Accel, warnings: list[str]) -> list[str]:
    """virt-v2v over the staged disks (one guest; -i disk for one, -i libvirtxml for several),
    writing into the run's own directory `work`; returns the output image paths in disk order.
    Its full log goes to virt-v2v.log, and its own warnings (e.g. it could not update the boot
    loader's configuration) are passed on verbatim into `warnings`."""
    outdir = os.path.join(work, "v2v")
    os.mkdir(outdir, 0o750)
    name = "guest"
    if len(staged) == 1:
        src = ["-i", "disk", staged[0]]
    else:
        xml = os.path.join(outdir, "input.xml")
        with open(xml, "w") as f:
            f.write(libvirt_xml(name, staged))
        src = ["-i", "libvirtxml", xml]
    argv = ["virt-v2v", "-v", *src, "--root", "first", "-o", "local", "-os", outdir, "-of", "qcow2", "-on", name]
    env = dict(accel.env(), LIBGUESTFS_CACHEDIR=os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp"))
    # The log is written as virt-v2v goes (its "[ 123.4] Converting ..." stage lines say where
    # the time goes), so a long run under TCG can be watched.
    res = run(argv, env=env, check=False, timeout=4 * 3600, output_file=cap.file_path("virt-v2v.log"))
    warnings += [line.strip() for line in res.stderr.splitlines() if line.startswith("virt-v2v: warning:")]
    if res.returncode != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-3:])
        raise CommandError(res.argv, res.returncode,
                           f"{tail} (whole log: {cap.file_path('virt-v2v.log')})")
    outs = [os.path.join(outdir, f"{name}-sd{chr(ord('a') + i)}") for i in range(len(staged))]
    missing = [o for o in outs if not os.path.isfile(o)]
    if missing:
        raise CommandError(res.argv, 0, f"virt-v2v wrote no {', '.join(missing)}")
    return outs


# --- the whole stage --------------------------------------------------------------------------

def convert(capture_path: str, engine: ConvertEngine = ConvertEngine.VIRT_V2V, method: CopyMethod = CopyMethod.COPY,
            accel: Accel | None = None, max_conversions: int | None = None,
            queue_root: str | None = None) -> Conversion:
    """Convert one capture; always records the outcome in its manifest (unless the capture
    itself is unusable, which raises UsageError before anything is written). It waits for a
    slot of its root first: at most max_conversions (default: from the cores and memory) run at
    once, each appliance wants a core and 2 GB (receive/convqueue.py); queue_root is the root
    whose queue it joins (the receiver's --root; default the capture's parent)."""
    capture_path = os.path.realpath(capture_path)
    capdir = read_capture(capture_path)
    root, capture_id = os.path.split(capture_path)
    cap = Store(root).open_capture(capture_id)
    with conversion_slot(queue_root or root, capture_path, max_conversions or default_max_conversions()):
        return _convert_locked(cap, capdir, engine, method, accel)


def _convert_locked(cap: CaptureDir, capdir: CaptureDirectory, engine: ConvertEngine, method: CopyMethod,
                    accel: Accel | None) -> Conversion:
    disks = capdir.manifest.disks
    started, t0 = _now(), time.monotonic()
    timings: dict[str, float] = {}
    accel = accel or detect_accel()
    log.info("libguestfs accelerator: %s (%s)", accel.name, accel.reason)
    versions = {"libguestfs": tool_version(["guestfish", "--version"]),
                "qemu_img": qimage.qemu_img_version()}
    if engine is ConvertEngine.VIRT_V2V:
        versions["virt_v2v"] = tool_version(["virt-v2v", "--version"])
    conv = Conversion(Outcome.FAILED, "", engine, versions, accel.name, accel.reason, started, "", 0.0, timings)
    # With virt-v2v the stage is thrown away after it: an overlay costs nothing to make.
    stage_method = CopyMethod.OVERLAY if engine is ConvertEngine.VIRT_V2V else method
    finals = [converted_image_name(d.name) for d in disks]
    needed = space_needed(cap, disks, CopyMethod.COPY if engine is ConvertEngine.VIRT_V2V else stage_method)
    work: str | None = None
    placed: list[str] = []       # converted images this run put in place
    try:
        if engine is ConvertEngine.VIRT_V2V:
            check_v2v_tools()
        check_space(cap, needed)
        # Everything this run writes before its results, in a directory only it made.
        work = tempfile.mkdtemp(prefix=WORK_PREFIX, suffix=WORK_SUFFIX, dir=cap.path)
        staged = [os.path.join(work, f"disk{i}.qcow2") for i in range(len(disks))]
        t = time.monotonic()
        for d, s in zip(disks, staged):
            stage_image(cap, d, s, stage_method)
        timings["stage_seconds"] = round(time.monotonic() - t, 3)
        conv.os, conv.fixes, conv.warnings = fix_guest(staged, accel, timings)
        if engine is ConvertEngine.VIRT_V2V:
            t = time.monotonic()
            outs = run_virt_v2v(cap, work, staged, accel, conv.warnings)
            timings["virt_v2v_seconds"] = round(time.monotonic() - t, 3)
            method_done = CopyMethod.VIRT_V2V
        else:
            outs, method_done = staged, stage_method
        # The one step that replaces what an earlier conversion made: only after all went well.
        for d, out, final in zip(disks, outs, finals):
            os.rename(out, cap.file_path(final))
            placed.append(final)
            if method_done is CopyMethod.OVERLAY:
                # beside the evidence now: its backing file is named as a neighbour (header only)
                run(["qemu-img", "rebase", "-u", "-F", d.format, "-b", d.image, cap.file_path(final)])
        for d, final in zip(disks, finals):
            st = os.stat(final, dir_fd=cap.fd)
            conv.images.append(ImageOut(d.name, d.image, final, method_done, st.st_blocks * 512))
        conv.result = Outcome.CONVERTED
        conv.message = (f"converted: {', '.join(finals)} ({len(conv.fixes)} fix-ups"
                        f"{', then virt-v2v' if engine is ConvertEngine.VIRT_V2V else ''})")
    except NotConvertible as e:
        conv.result, conv.message = Outcome.NOT_CONVERTED, f"not converted: {e}"
    except NoSpace as e:
        conv.result, conv.message = Outcome.FAILED, f"conversion failed: {e}"
    except (CommandError, ServerError, OSError) as e:
        conv.result = Outcome.FAILED
        conv.message = f"conversion failed: {out_of_space(e, cap, needed) or e}"
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if conv.result is not Outcome.CONVERTED:
            for final in placed:        # made by this run, and not whole: never left as if valid
                cap.unlink(final)
    conv.finished = _now()
    conv.seconds = round(time.monotonic() - t0, 3)
    log.info("%s (%.1f s)", conv.message, conv.seconds)
    try:
        capdir.write_section("conversion", conv)
    except OSError as e:
        # manifest.json is replaced in one step or not at all: it stays as it was
        conv.result = Outcome.FAILED if conv.result is Outcome.CONVERTED else conv.result
        conv.message += (f"; and the outcome could not be recorded in {capdir.file(MANIFEST)} "
                         f"({e.strerror}): the manifest is as it was")
        if conv.result is Outcome.FAILED and placed:
            for final in placed:
                cap.unlink(final)
            conv.images = []
    return conv
