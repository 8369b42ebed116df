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
import fnmatch
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from ...errors import ColdcloneError, CommandError, ServerError
from ...manifest import MANIFEST
from ...units import human_bytes
from ..receive import image as qimage
from ..receive.convqueue import conversion_slot, default_max_conversions
from ..receive.manifest import CaptureDirectory, ManifestDisk, ManifestError
from ..receive.store import FAILURE, CaptureDir, Store, converted_image_name, free_bytes
from ...choices import ConvertEngine, ConvertNetwork
from ...guestos import netconfig, network
from ...guestos.network import FileSource
from ...runcmd import run
from . import fixes as F
from . import initramfs, netmap, uefi
from .guestfs import Accel, Guest, GuestFiles, Skipped, detect_accel, tool_version
from .model import Conversion, CopyMethod, Fix, FixKind, GuestOS, ImageOut, NetworkMapping, Outcome

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
    ("/boot/loader/entries/*.conf", "kernel"),      # BLS entries (RHEL 8+): options lines
    ("/etc/kernel/cmdline", "cmdline"),             # what kernel-install writes into new entries
    ("/boot/grub2/grubenv", "cmdline"),             # kernelopts= of RHEL 8's BLS entries
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
    ("/etc/netplan/*.yaml", "netplan"),
    ("/etc/systemd/network/*.link", "networkd-link"),
    ("/etc/systemd/network/*.network", "networkd"),
)
SERVICE_LINKS = ("/etc/systemd/system/*.wants/*", "/etc/rc[2-5].d/S*")


@dataclass
class FixContext:
    """What the fix of one file needs: the guest's volumes (device names) and the network
    plan (netconfig.plan over the guest's own files, with the --network policy)."""

    dmap: F.DeviceMap
    roles: netmap.Roles
    names: dict[str, str]          # config file -> the interface netconfig says it configures


def _fix_text(kind: str, text: str, path: str, ctx: FixContext) -> F.FixResult:
    roles, name = ctx.roles, ctx.names.get(path)
    names_arg = roles.plan.kernel_arg
    if kind == "fstab":
        return F.fix_fstab(text, ctx.dmap, path)
    if kind == "crypttab":
        return F.fix_crypttab(text, ctx.dmap, path)
    if kind == "kernel":
        res = F.fix_kernel_args(text, ctx.dmap, path)
        return netmap.chain_results(res, lambda t: netmap.fix_kernel_names(t, path)) if names_arg else res
    if kind == "cmdline":
        return netmap.fix_kernel_names(text, path) if names_arg else F.FixResult(text)
    if kind == "udev":
        return F.fix_net_rules(text, path)
    if kind == "ifcfg":
        if not network.is_ifcfg_name(path.rsplit("/", 1)[-1]):
            return F.FixResult(text)
        return netmap.chain_results(F.fix_ifcfg(text, path), lambda t: netmap.map_ifcfg(t, path, name, roles))
    if kind == "nm":
        return netmap.chain_results(F.fix_nm_keyfile(text, path), lambda t: netmap.map_nm_keyfile(t, path, name, roles))
    if kind == "interfaces":
        return netmap.chain_results(F.fix_interfaces(text, path), lambda t: netmap.map_interfaces(t, path, roles))
    if kind == "netplan":
        return netmap.map_netplan(text, path, roles)
    if kind == "networkd-link":
        return netmap.map_networkd_link(text, path)
    if kind == "networkd":
        return netmap.map_networkd_network(text, path, name, roles)
    if kind == "devmap":
        return F.fix_device_map(text, path)
    raise ValueError(kind)


def map_network(files: FileSource, policy: ConvertNetwork) -> tuple[netmap.Roles, dict[str, str], NetworkMapping]:
    """The guest's network read with the agent's own parsers, and the plan both carry out."""
    cfg = netconfig.read_network(files)
    plan = netconfig.plan(cfg)
    roles = netmap.Roles(plan, policy)
    prim = plan.primary
    mapping = NetworkMapping(policy=policy, problems=list(plan.problems))
    if prim is not None:
        mapping.primary, mapping.style = prim.name, prim.style.value
        mapping.name = plan.new_name if (plan.rename or plan.kernel_arg) else prim.name
        mapping.method = "dhcp" if roles.to_dhcp or prim.method == "dhcp" else prim.method
        if not roles.to_dhcp:
            mapping.addresses, mapping.gateway, mapping.dns = list(prim.addresses), prim.gateway, list(prim.dns)
        mapping.flattened, mapping.disabled = list(plan.flattened), plan.disabled
    log.info("network: %s", f"primary {prim.describe()} -> {mapping.name} ({policy.value})" if prim
             else "no primary interface configured")
    return roles, {i.path: i.name for i in cfg.interfaces}, mapping


def _style_of(path: str) -> str | None:
    return "interfaces" if path.startswith("/etc/network/") else None


def check_network(files: FileSource, plan: netconfig.NetworkPlan) -> str | None:
    """The guest's network read again after the fix-ups: its primary must now be the interface
    the plan named (a configuration in a file no fix-up reached would be left on the old name)."""
    if plan.primary is None or not plan.rename:
        return None
    after = netconfig.read_network(files)
    left = [i for i in after.interfaces if i.name == plan.primary.name and i.onboot]
    if after.primary == plan.new_name and not left:
        return None
    return (f"after the fix-ups the guest's primary interface is {after.primary or 'none'}, not {plan.new_name}"
            + (f"; {', '.join(i.path for i in left)} still configure(s) {plan.primary.name}" if left else "")
            + ": its network may not come up on the instance; check it from the cloud console")


def apply_fixes(guest: Guest, files: GuestFiles, dmap: F.DeviceMap, policy: ConvertNetwork = ConvertNetwork.DHCP
                ) -> tuple[list[Fix], list[str], NetworkMapping]:
    """Every fix-up on the mounted guest; returns the fixes made, what was left alone and
    what the network became. `files`: the same guest as the agent's parsers read it."""
    fixes: list[Fix] = []
    warnings: list[str] = []
    roles, names, mapping = map_network(files, policy)
    ctx = FixContext(dmap, roles, names)
    # every ifupdown file the model read, wherever interfaces' `source` lines found it
    sourced = tuple((p, "interfaces") for p in names if p.startswith("/") and not any(
        fnmatch.fnmatchcase(p, pattern) for pattern, _ in NET_FILES) and _style_of(p) == "interfaces")
    for pattern, kind in DEVICE_FILES + NET_FILES + sourced:
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
            res = _fix_text(kind, text, path, ctx)
            warnings += res.warnings
            if res.changed:
                if kind == "netplan":
                    guest.write(netmap.backup_name(path), text)     # the original, inert beside it
                guest.write(path, res.text)
                for fx in res.fixes:
                    log.info("fixed %s", fx.render())
                fixes += res.fixes
    if roles.plan.kernel_arg and not any(f.kind is FixKind.NET_KERNEL_ARG for f in fixes):
        why = (f"no boot loader configuration with a kernel line was found: {netconfig.NAMES_ARG} could "
               f"not be set, so the first virtio NIC keeps its slot name and {mapping.name}'s "
               f"configuration may not apply; add {netconfig.NAMES_ARG} to the instance's kernel line")
        warnings.append(why)
        mapping.problems.append(why)
    problem = check_network(files, roles.plan)
    if problem:
        warnings.append(problem)
        mapping.problems.append(problem)
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
    return fixes, warnings, mapping


def fix_guest(images: list[str], accel: Accel, timings: dict[str, float], engine: ConvertEngine = ConvertEngine.VIRT_V2V,
              network: ConvertNetwork = ConvertNetwork.DHCP) -> tuple[GuestOS, list[Fix], list[str], NetworkMapping]:
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
        files = GuestFiles(g)
        fixes, more, mapping = apply_fixes(g, files, dmap, network)
        esp_fixes, esp_warnings = uefi.make_removable(g, files, [_os_id(files, os_)])
        fixes += esp_fixes
        more += esp_warnings
        # what the parsers left unread (a huge file, an odd name), once each
        more += [w for w in dict.fromkeys(str(s) for s in files.skipped) if w not in more]
        timings["fixups_seconds"] = round(time.monotonic() - t, 3)
        if engine is ConvertEngine.FIXUPS:
            # virt-v2v rebuilds the initramfs itself; without it, ours or a refusal
            t = time.monotonic()
            try:
                fixes += initramfs.ensure_virtio(g, g.tmp)
            except initramfs.InitramfsRefused as e:
                raise NotConvertible(str(e)) from None
            timings["initramfs_seconds"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
    timings["appliance_shutdown_seconds"] = round(time.monotonic() - t, 3)
    return os_, fixes, warnings + more, mapping


def _os_id(files: FileSource, os_: GuestOS) -> str:
    """The os-release ID (debian, rhel, rocky ...), which names the ESP's distribution directory."""
    for line in (files.read("/etc/os-release") or files.read("/usr/lib/os-release") or "").splitlines():
        if line.startswith("ID="):
            return line[3:].strip().strip("\"'")
    return os_.distro


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
            queue_root: str | None = None, network: ConvertNetwork = ConvertNetwork.DHCP) -> Conversion:
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
        return _convert_locked(cap, capdir, engine, method, accel, network)


def _convert_locked(cap: CaptureDir, capdir: CaptureDirectory, engine: ConvertEngine, method: CopyMethod,
                    accel: Accel | None, network: ConvertNetwork = ConvertNetwork.DHCP) -> Conversion:
    disks = capdir.manifest.disks
    started, t0 = _now(), time.monotonic()
    timings: dict[str, float] = {}
    accel = accel or detect_accel()
    log.info("libguestfs accelerator: %s (%s)", accel.name, accel.reason)
    versions = {"libguestfs": tool_version(["guestfish", "--version"]),
                "qemu_img": qimage.qemu_img_version()}
    if engine is ConvertEngine.VIRT_V2V:
        versions["virt_v2v"] = tool_version(["virt-v2v", "--version"])
    conv = Conversion(Outcome.FAILED, "", engine, versions, accel.name, accel.reason, started, "", 0.0, timings,
                      network=NetworkMapping(policy=network))
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
        conv.os, conv.fixes, conv.warnings, conv.network = fix_guest(staged, accel, timings, engine, network)
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
