"""A host-only initramfs under the fixups engine: add the virtio drivers or refuse.

A physical server's initramfs often holds only its own hardware's drivers (RHEL's dracut
builds host-only images; Debian with MODULES=dep or list): on virtio the kernel finds no root
disk and stops in the initramfs. virt-v2v rebuilds it; our fixups engine does the same with
the guest's own tool, in its own root, inside the appliance (`command`: the appliance's
kernel, the guest's binaries): the virtio drivers are added to the guest's configuration
(/etc/initramfs-tools/modules, or a dracut.conf.d file), so later kernel updates on the
instance keep them, and the newest kernel's initramfs is rebuilt. The result is read back
(guestos.boot, the same reader as the agent's) and must hold them; a guest without such a
tool, or a rebuild that still lacks them, is refused before any image is written: never
`converted` and unbootable.
"""

from __future__ import annotations

import logging
import os

from ...guestos import boot
from ...guestos.model import InitramfsDrivers
from .fixes import MARK
from .guestfs import Guest
from .model import Fix, FixKind

log = logging.getLogger("coldclone.convert")

DEBIAN_MODULES = "/etc/initramfs-tools/modules"
DRACUT_CONF = "/etc/dracut.conf.d/90-coldclone-virtio.conf"
TOOLS = {"update-initramfs": ("/usr/sbin/update-initramfs", "/sbin/update-initramfs"),
         "dracut": ("/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut")}


class InitramfsRefused(Exception):
    """The guest would not boot on virtio and the fixups engine cannot change that."""


def read_drivers(guest: Guest, tmp: str) -> tuple[str, InitramfsDrivers] | None:
    """(kernel version, the virtio drivers of its initramfs) for the guest's newest kernel."""
    found = boot.newest_initramfs_name(list(guest.ls("/boot")))
    if found is None:
        return None
    ver, name = found
    local = os.path.join(tmp, "initramfs")
    guest.download(f"/boot/{name}", local)
    try:
        builtin = guest.read(f"/lib/modules/{ver}/modules.builtin") or ""
        return ver, boot.drivers_of_file(local, f"/boot/{name}", builtin)
    finally:
        os.unlink(local)


def _describe(ini: InitramfsDrivers) -> str:
    return ("virtio " + (", ".join(ini.present) or "none")
            + (f" (missing {', '.join(ini.missing)})" if ini.missing else ""))


def _tool(guest: Guest) -> str | None:
    for tool, paths in TOOLS.items():
        if any(guest.is_file(p) for p in paths):
            return tool
    return None


def ensure_virtio(guest: Guest, tmp: str) -> list[Fix]:
    """The fixups engine's answer to `initramfs-virtio`: nothing when the newest initramfs can
    reach a virtio disk, else the drivers added and the initramfs rebuilt (two Fixes), else
    InitramfsRefused with what to do."""
    found = read_drivers(guest, tmp)
    if found is None:
        return []
    ver, ini = found
    if ini.error or not boot.lacks_virtio_disk(ini):
        return []
    tool = _tool(guest)
    if tool is None:
        raise InitramfsRefused(
            f"{ini.path} has no virtio disk driver ({_describe(ini)}) and the guest has neither "
            f"update-initramfs nor dracut to rebuild it: on virtio it would stop in the initramfs; "
            f"convert it with --engine virt-v2v")
    fixes = []
    drivers = list(boot.VIRTIO_DRIVERS)
    why = "the instance's disk and NIC are virtio: the initramfs must carry their drivers, now and " \
          "after every kernel update on the instance"
    if tool == "update-initramfs":
        text = guest.read(DEBIAN_MODULES) or ""
        listed = {line.split("#", 1)[0].strip() for line in text.splitlines()}
        add = [d for d in drivers if d not in listed]
        if add:
            tail = "" if not text or text.endswith("\n") else "\n"
            guest.write(DEBIAN_MODULES, text + tail + f"# {MARK}: the virtio drivers of a KVM instance\n"
                        + "".join(f"{d}\n" for d in add))
            fixes.append(Fix(FixKind.INITRAMFS_MODULES, DEBIAN_MODULES, None, "(not listed)", " ".join(add), why))
        argv = ["update-initramfs", "-u", "-k", ver]
    else:
        conf = f"# {MARK}: the virtio drivers of a KVM instance\nadd_drivers+=\" {' '.join(drivers)} \"\n"
        guest.mkdir_p(os.path.dirname(DRACUT_CONF))
        guest.write(DRACUT_CONF, conf)
        fixes.append(Fix(FixKind.INITRAMFS_MODULES, DRACUT_CONF, None, "(no such file)",
                         f"add_drivers+=\" {' '.join(drivers)} \"", why))
        argv = ["dracut", "-f", "--kver", ver, ini.path]
    log.info("rebuilding %s in the guest: %s", ini.path, " ".join(argv))
    guest.command(argv)
    again = read_drivers(guest, tmp)
    after = again[1] if again else None
    if after is None or after.error or boot.lacks_virtio_disk(after):
        raise InitramfsRefused(
            f"{ini.path} still has no virtio disk driver after `{' '.join(argv)}` in the guest "
            f"({after.error if after and after.error else _describe(after) if after else 'no initramfs'}); "
            f"convert it with --engine virt-v2v")
    fixes.append(Fix(FixKind.INITRAMFS_REBUILT, ini.path, None, _describe(ini), _describe(after),
                     f"rebuilt by the guest's own {tool} for kernel {ver} (the newest; the default boot entry)"))
    return fixes
