"""The EFI system partition: which boot loaders it holds, and what a fresh firmware finds.

A UEFI server installed the default way boots `\\EFI\\<distro>\\grubx64.efi` (or shimx64.efi)
through a boot entry in its own NVRAM. A new cloud instance starts with an empty NVRAM: its
firmware (OVMF) boots only the removable-media path `\\EFI\\BOOT\\BOOTX64.EFI`, and finds
nothing if the installer did not put a copy there (grub-install without --removable does not).
`removable_plan` says what makes the guest's own loader reachable there, for the readiness
report (the prediction) and coldclone-convert (which copies the files): the same answer.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from .model import ESP_MOUNT, EspDir, EspLoaders
from .network import FileSource

REMOVABLE = "EFI/BOOT/BOOTX64.EFI"
SET_ASIDE = "EFI/BOOT/BOOTX64.EFI.coldclone-old"
# the distribution's directory on the ESP, by os-release ID (and ID_LIKE)
DISTRO_DIRS = {"debian": ("debian",), "ubuntu": ("ubuntu",), "rhel": ("redhat",),
               "centos": ("centos", "redhat"), "rocky": ("rocky", "redhat"),
               "almalinux": ("almalinux", "redhat"), "ol": ("redhat",), "fedora": ("fedora",),
               "sles": ("sles",), "opensuse-leap": ("opensuse",), "suse": ("sles", "opensuse")}


@dataclass
class RemovablePlan:
    """What makes the guest's loader reachable at the removable-media path."""

    source: str | None = None        # EFI/debian: the distribution's directory
    loader: str | None = None        # the file a fresh firmware must run: shimx64.efi or grubx64.efi
    copies: list[tuple[str, str]] = field(default_factory=list)    # (from, to), paths on the ESP
    set_aside: str | None = None     # a different loader already at EFI/BOOT/BOOTX64.EFI goes here
    found: str = ""                  # what a fresh NVRAM finds today, in words
    problem: str | None = None       # no loader we can tell is the OS's


def read_esp(fs: FileSource, mount: str = ESP_MOUNT) -> EspLoaders | None:
    """The ESP's EFI/ directories and the digests of their .efi files; None if the OS has no
    ESP mounted there."""
    top = fs.listdir(posixpath.join(mount, "EFI"))
    if not top:
        return None
    esp = EspLoaders(mount=mount)
    for name in top:
        files = fs.listdir(posixpath.join(mount, "EFI", name))
        if not files:
            continue
        esp.dirs.append(EspDir(name, files))
        for f in files:
            if f.lower().endswith(".efi"):
                digest = fs.digest(posixpath.join(mount, "EFI", name, f))
                if digest:
                    esp.digests[f"EFI/{name}/{f}"] = digest
    return esp


def _distro_dir(esp: EspLoaders, os_ids: list[str]) -> tuple[EspDir | None, str | None]:
    candidates = [d for d in esp.dirs if d.name.upper() != "BOOT" and (d.find("shimx64.efi") or d.find("grubx64.efi"))]
    for os_id in os_ids:
        for want in DISTRO_DIRS.get(os_id, (os_id,)):
            hit = next((d for d in candidates if d.name.lower() == want), None)
            if hit:
                return hit, None
    if len(candidates) == 1:
        return candidates[0], None
    if not candidates:
        return None, None
    return None, (f"the ESP holds loaders of {len(candidates)} systems ({', '.join(d.name for d in candidates)}) "
                  f"and none is named after this OS: which one its NVRAM entry booted cannot be told")


def removable_plan(esp: EspLoaders, os_ids: list[str]) -> RemovablePlan:
    """The copies that make the OS's own loader the one a fresh firmware boots. With shim, shim
    goes to BOOTX64.EFI with grub beside it (shim loads grubx64.efi from its own directory) and
    shim's fallback (fbx64.efi) when the distribution ships the BOOTX64.CSV it reads, so the
    instance's firmware gets its boot entry back on first boot."""
    plan = RemovablePlan()
    src, problem = _distro_dir(esp, os_ids)
    existing = esp.removable
    if src is None:
        plan.problem = problem
        plan.found = f"\\{existing.replace('/', chr(92))}" if existing else "no boot loader"
        return plan
    base = f"EFI/{src.name}"
    shim, grub = src.find("shimx64.efi"), src.find("grubx64.efi")
    plan.source, plan.loader = base, shim or grub
    want = esp.digests.get(f"{base}/{plan.loader}")
    if existing and want and esp.digests.get(existing) == want:
        plan.found = f"\\{base.replace('/', chr(92))}\\{plan.loader} (a copy at the removable-media path)"
        return plan                 # already reachable
    plan.copies.append((f"{base}/{plan.loader}", REMOVABLE))
    if shim:
        if grub:
            plan.copies.append((f"{base}/{grub}", "EFI/BOOT/grubx64.efi"))
        for extra in ("mmx64.efi", "fbx64.efi"):
            hit = src.find(extra)
            if hit and (extra != "fbx64.efi" or src.find("BOOTX64.CSV")):
                plan.copies.append((f"{base}/{hit}", f"EFI/BOOT/{extra}"))
    if existing:
        plan.set_aside = SET_ASIDE
        plan.found = f"another loader at \\{existing.replace('/', chr(92))}, not this OS's"
    else:
        plan.found = "no boot loader (nothing at \\EFI\\BOOT\\BOOTX64.EFI)"
    return plan
