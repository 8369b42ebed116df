"""The guest's own UEFI loader at the removable-media path, so a fresh firmware boots it.

guestos.esp decides (the same plan the agent's readiness report predicted); this module
reads the ESP through the appliance and copies the files. A different loader already at
\\EFI\\BOOT\\BOOTX64.EFI is never overwritten silently: it is renamed aside, and the Fix says so.
"""

from __future__ import annotations

import logging
import posixpath

from ...guestos import esp as espmod
from .guestfs import Guest, GuestFiles
from .model import Fix, FixKind

log = logging.getLogger("coldclone.convert")


def make_removable(guest: Guest, files: GuestFiles, os_ids: list[str]) -> tuple[list[Fix], list[str]]:
    """Fixes (one per file copied) and warnings (a loader we cannot tell is the OS's); `files`:
    the guest as guestos.esp reads it."""
    esp = espmod.read_esp(files)
    if esp is None:
        return [], []
    plan = espmod.removable_plan(esp, os_ids)
    if not plan.copies:
        return [], ([f"{esp.mount}: {plan.problem}; a fresh UEFI firmware finds {plan.found}"]
                    if plan.problem and not esp.removable else [])
    fixes = []
    on = lambda rel: posixpath.join(esp.mount, rel)  # noqa: E731
    why = ("a new instance's firmware starts with an empty NVRAM and boots only the removable-media "
           "path; the server reached its loader through its own NVRAM boot entry")
    guest.mkdir_p(on("EFI/BOOT"))
    if plan.set_aside:
        old = esp.removable
        digest = esp.digests.get(old, "?")
        guest.move(on(old), on(plan.set_aside))
        fixes.append(Fix(FixKind.UEFI_REMOVABLE, on(old), None, f"a different loader (sha256 {digest[:16]}...)",
                         f"renamed to {on(plan.set_aside)}",
                         f"it is not this OS's loader ({plan.source}/{plan.loader}), which goes there instead"))
    for src, dst in plan.copies:
        guest.copy(on(src), on(dst))
        fixes.append(Fix(FixKind.UEFI_REMOVABLE, on(dst), None, "(none)", f"copy of {on(src)}", why))
    return fixes, []
