"""Convert a verified capture into a guest that boots on KVM virtio.

The verified images stay untouched (they are the evidence): every write goes to a separate
image beside them, `<disk>.kvm.qcow2`, and the result is recorded in the `conversion` section
of manifest.json (written atomically, like the receiver writes it).

The pipeline, one libguestfs appliance of ours per conversion:
 1. stage: a qcow2 per disk beside the evidence (an overlay backed by the evidence, which qemu
    opens read-only, or a standalone copy);
 2. our fix-ups (agent.server.convert.fixes) through one guestfish handle holding every disk of the
    capture, so /var on a second disk or an md RAID1 is one guest; inspection first: a disk with
    no OS is `not converted`, and the capture stays as verified;
 3. engine virt-v2v: virt-v2v reads the fixed stage and writes the converted disks (virtio
    drivers in the initramfs, its own remapping); engine fixups: the stage is the result.
Our fixes go before virt-v2v so that it sees UUID= names (it cannot rewrite a hand-written
grub.cfg, and warns "could not determine a way to update the configuration of Grub2").
"""

from __future__ import annotations

import fcntl
import fnmatch
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from ...errors import ColdcloneError, CommandError, ServerError
from ..receive import image as qimage
from ..receive.manifest import CaptureDirectory, ManifestDisk
from ..receive.store import CaptureDir, Store, converted_image_name
from ...guestos import netconfig, network
from ...runcmd import run
from . import fixes as F
from . import initramfs, netmap, uefi
from .guestfs import Accel, Guest, detect_accel, tool_version
from .model import (Conversion, CopyMethod, Engine, Fix, FixKind, GuestOS, ImageOut, NetworkMapping,
                    NetworkPolicy, Outcome)

log = logging.getLogger("coldclone.convert")

LOCK_NAME = ".coldclone-convert.lock"


class NotConvertible(ColdcloneError):
    """The capture is fine, but what is on it is not a guest we can convert (no OS ...)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_capture(path: str) -> CaptureDirectory:
    """A complete, verified capture; anything else is refused with what is wrong and what to do."""
    return CaptureDirectory.load(path, purpose="converted")


@contextmanager
def conversion_lock(root: str):
    """One conversion at a time per receiver root: each appliance wants CPU and memory, and
    a queue of conversions finishes each one sooner than all of them at once."""
    fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the conversion of another capture in %s to finish", root)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- staging ----------------------------------------------------------------------------------

def stage_image(cap: CaptureDir, disk: ManifestDisk, dest: str, method: CopyMethod) -> None:
    """A writable image of one disk at `dest` (a name in the capture dir); the evidence is only
    read: qemu-img convert reads it, and an overlay's backing file is opened read-only."""
    src = cap.file_path(disk.image)
    out = cap.file_path(dest)
    cap.unlink(dest)
    if method is CopyMethod.OVERLAY:
        # A relative backing name: the capture directory can be moved as a whole.
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", disk.format, "-b", disk.image, out])
    elif disk.format == "raw":
        qimage.convert_to_qcow2(src, out)
    else:
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", src, out])


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


def map_network(guest: Guest, policy: NetworkPolicy) -> tuple[netmap.Roles, dict[str, str], NetworkMapping]:
    """The guest's network read with the agent's own parsers, and the plan both carry out."""
    cfg = netconfig.read_network(guest)
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


def check_network(guest: Guest, plan: netconfig.NetworkPlan) -> str | None:
    """The guest's network read again after the fix-ups: its primary must now be the interface
    the plan named (a configuration in a file no fix-up reached would be left on the old name)."""
    if plan.primary is None or not plan.rename:
        return None
    after = netconfig.read_network(guest)
    left = [i for i in after.interfaces if i.name == plan.primary.name and i.onboot]
    if after.primary == plan.new_name and not left:
        return None
    return (f"after the fix-ups the guest's primary interface is {after.primary or 'none'}, not {plan.new_name}"
            + (f"; {', '.join(i.path for i in left)} still configure(s) {plan.primary.name}" if left else "")
            + ": its network may not come up on the instance; check it from the cloud console")


def apply_fixes(guest: Guest, dmap: F.DeviceMap, policy: NetworkPolicy = NetworkPolicy.DHCP
                ) -> tuple[list[Fix], list[str], NetworkMapping]:
    """Every fix-up on the mounted guest; returns the fixes made, what was left alone and
    what the network became."""
    fixes: list[Fix] = []
    warnings: list[str] = []
    roles, names, mapping = map_network(guest, policy)
    ctx = FixContext(dmap, roles, names)
    # every ifupdown file the model read, wherever interfaces' `source` lines found it
    sourced = tuple((p, "interfaces") for p in names if p.startswith("/") and not any(
        fnmatch.fnmatchcase(p, pattern) for pattern, _ in NET_FILES) and _style_of(p) == "interfaces")
    for pattern, kind in DEVICE_FILES + NET_FILES + sourced:
        paths = guest.glob(pattern) if "*" in pattern else [pattern]
        for path in paths:
            text = guest.read(path)
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
    problem = check_network(guest, roles.plan)
    if problem:
        warnings.append(problem)
        mapping.problems.append(problem)
    links = [p for pattern in SERVICE_LINKS for p in guest.glob(pattern) if guest.is_symlink(p)]
    for fx in F.hardware_service_links(links):
        guest.remove(fx.path)
        log.info("fixed %s (%s)", fx.render(), fx.why)
        fixes.append(fx)
    for w in warnings:
        log.warning("%s", w)
    return fixes, warnings, mapping


def fix_guest(images: list[str], accel: Accel, timings: dict[str, float], engine: Engine = Engine.VIRT_V2V,
              network: NetworkPolicy = NetworkPolicy.DHCP) -> tuple[GuestOS, list[Fix], list[str], NetworkMapping]:
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
        fixes, more, mapping = apply_fixes(g, dmap, network)
        esp_fixes, esp_warnings = uefi.make_removable(g, [_os_id(g, os_)])
        fixes += esp_fixes
        more += esp_warnings
        timings["fixups_seconds"] = round(time.monotonic() - t, 3)
        if engine is Engine.FIXUPS:
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


def _os_id(guest: Guest, os_: GuestOS) -> str:
    """The os-release ID (debian, rhel, rocky ...), which names the ESP's distribution directory."""
    for line in (guest.read("/etc/os-release") or guest.read("/usr/lib/os-release") or "").splitlines():
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


def run_virt_v2v(cap: CaptureDir, staged: list[str], accel: Accel, warnings: list[str]) -> list[str]:
    """virt-v2v over the staged disks (one guest; -i disk for one, -i libvirtxml for several);
    returns the output image paths in disk order. Its full log goes to virt-v2v.log, and its own
    warnings (e.g. it could not update the boot loader's configuration) are passed on verbatim
    into `warnings`."""
    outdir = cap.file_path("convert-v2v.tmp")
    shutil.rmtree(outdir, ignore_errors=True)
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

def convert(capture_path: str, engine: Engine = Engine.VIRT_V2V, method: CopyMethod = CopyMethod.COPY,
            accel: Accel | None = None, network: NetworkPolicy = NetworkPolicy.DHCP) -> Conversion:
    """Convert one capture; always records the outcome in its manifest (unless the capture
    itself is unusable, which raises UsageError before anything is written)."""
    capture_path = os.path.realpath(capture_path)
    capdir = read_capture(capture_path)
    root, capture_id = os.path.split(capture_path)
    cap = Store(root).open_capture(capture_id)
    with conversion_lock(root):
        return _convert_locked(cap, capdir, engine, method, accel, network)


def _convert_locked(cap: CaptureDir, capdir: CaptureDirectory, engine: Engine, method: CopyMethod,
                    accel: Accel | None, network: NetworkPolicy = NetworkPolicy.DHCP) -> Conversion:
    disks = capdir.manifest.disks
    started, t0 = _now(), time.monotonic()
    timings: dict[str, float] = {}
    accel = accel or detect_accel()
    log.info("libguestfs accelerator: %s (%s)", accel.name, accel.reason)
    versions = {"libguestfs": tool_version(["guestfish", "--version"]),
                "qemu_img": qimage.qemu_img_version()}
    if engine is Engine.VIRT_V2V:
        versions["virt_v2v"] = tool_version(["virt-v2v", "--version"])
    conv = Conversion(Outcome.FAILED, "", engine, versions, accel.name, accel.reason, started, "", 0.0, timings,
                      network=NetworkMapping(policy=network))
    # With virt-v2v the stage is thrown away after it: an overlay costs nothing to make.
    stage_method = CopyMethod.OVERLAY if engine is Engine.VIRT_V2V else method
    # Names the capture dir's validated calls accept (no leading dot); removed whatever happens.
    staged = [f"{d.name}.convert-stage.qcow2" for d in disks]
    finals = [converted_image_name(d.name) for d in disks]
    try:
        for d in disks:
            cap.unlink(converted_image_name(d.name))      # a new conversion replaces an older one
        if engine is Engine.VIRT_V2V:
            check_v2v_tools()
        t = time.monotonic()
        for d, s in zip(disks, staged):
            stage_image(cap, d, s, stage_method)
        timings["stage_seconds"] = round(time.monotonic() - t, 3)
        conv.os, conv.fixes, conv.warnings, conv.network = fix_guest(
            [cap.file_path(s) for s in staged], accel, timings, engine, network)
        if engine is Engine.VIRT_V2V:
            t = time.monotonic()
            outs = run_virt_v2v(cap, [cap.file_path(s) for s in staged], accel, conv.warnings)
            timings["virt_v2v_seconds"] = round(time.monotonic() - t, 3)
            for out, final in zip(outs, finals):
                os.rename(out, cap.file_path(final))
            method_done = CopyMethod.VIRT_V2V
        else:
            for s, final in zip(staged, finals):
                os.rename(s, final, src_dir_fd=cap.fd, dst_dir_fd=cap.fd)
            method_done = stage_method
        for d, final in zip(disks, finals):
            st = os.stat(final, dir_fd=cap.fd)
            conv.images.append(ImageOut(d.name, d.image, final, method_done, st.st_blocks * 512))
        conv.result = Outcome.CONVERTED
        conv.message = (f"converted: {', '.join(finals)} ({len(conv.fixes)} fix-ups"
                        f"{', then virt-v2v' if engine is Engine.VIRT_V2V else ''})")
    except NotConvertible as e:
        conv.result, conv.message = Outcome.NOT_CONVERTED, f"not converted: {e}"
    except (CommandError, ServerError, OSError) as e:
        conv.result, conv.message = Outcome.FAILED, f"conversion failed: {e}"
    finally:
        for s in staged:
            cap.unlink(s)
        shutil.rmtree(cap.file_path("convert-v2v.tmp"), ignore_errors=True)
        if conv.result is not Outcome.CONVERTED:
            for final in finals:
                cap.unlink(final)
    conv.finished = _now()
    conv.seconds = round(time.monotonic() - t0, 3)
    log.info("%s (%.1f s)", conv.message, conv.seconds)
    capdir.write_section("conversion", conv.to_dict())
    return conv


