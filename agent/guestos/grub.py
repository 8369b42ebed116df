"""Boot loader files that name hardware: grub's device.map, and root= on the
kernel lines of grub legacy / grub2 / /etc/default/grub."""

from __future__ import annotations

import re

from . import files


def parse_device_map(text: str) -> dict[str, str]:
    out = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"(\([^)]+\))\s+(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def kernel_roots(text: str) -> list[str]:
    """root= values on kernel lines (grub.conf `kernel`, grub.cfg `linux`, GRUB_CMDLINE)."""
    return kernel_args(text, "root")


def kernel_args(text: str, key: str) -> list[str]:
    """KEY= values on kernel lines (root=, resume=), each once, in order."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if re.match(r"(kernel|linux|linux16|linuxefi|GRUB_CMDLINE_LINUX\w*\s*=)", line):
            for m in re.finditer(r"(?<![\w.])" + re.escape(key) + r"=(\S+?)[\"']?(?=\s|$)", line):
                if m.group(1) not in out:
                    out.append(m.group(1))
    return out


DEVICE_MAPS = ("boot/grub/device.map", "boot/grub2/device.map")
GRUB_CONFIGS = ("boot/grub/grub.conf", "boot/grub/menu.lst", "boot/grub2/grub.cfg",
                "boot/grub/grub.cfg", "etc/default/grub")


def read_device_map(root: str, boot_root: str | None = None) -> tuple[dict[str, str], str | None]:
    for base, prefix in ((boot_root, "boot/"), (root, "")):
        if base is None:
            continue
        for rel in DEVICE_MAPS:
            # On a separate /boot filesystem the files sit at its top.
            rel_here = rel[len(prefix):] if prefix and rel.startswith(prefix) else rel
            text = files.read_text(base, rel_here)
            if text is not None:
                return parse_device_map(text), "/" + rel
    return {}, None


def read_kernel_roots(root: str, boot_root: str | None = None) -> list[tuple[str, str]]:
    """(file, root=value) pairs."""
    return read_kernel_args(root, boot_root, "root")


def read_kernel_args(root: str, boot_root: str | None, key: str) -> list[tuple[str, str]]:
    """(file, value) pairs of KEY= on the kernel lines of every boot loader configuration."""
    out = []
    for rel in GRUB_CONFIGS:
        if rel.startswith("boot/") and boot_root is not None:
            text = files.read_text(boot_root, rel[len("boot/"):])
            if text is None:
                text = files.read_text(root, rel)
        else:
            text = files.read_text(root, rel)
        if text:
            for value in kernel_args(text, key):
                out.append(("/" + rel, value))
    return out
