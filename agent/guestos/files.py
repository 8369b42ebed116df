"""Reading files of a source OS tree without ever leaving it.

The tree is another machine's root: its absolute symlinks (/etc/grub.conf ->
/boot/grub/grub.conf, /etc/mtab -> /proc/mounts) mean paths in *that* tree,
so they are resolved against the tree's root, never against the live system.
"""

from __future__ import annotations

import os
import posixpath

MAX_LINKS = 40
MAX_BYTES = 1 << 20   # config files; anything bigger is not what we look for


def resolve(root: str, rel: str) -> str | None:
    """The real path of rel inside root, following links as the source OS would."""
    parts = [p for p in rel.strip("/").split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.strip("/").split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done) if done else root


def read_text(root: str, rel: str) -> str | None:
    path = resolve(root, rel)
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return f.read(MAX_BYTES).decode("utf-8", "replace")
    except OSError:
        return None


def exists(root: str, rel: str) -> bool:
    path = resolve(root, rel)
    return path is not None and os.path.lexists(path)


def listdir(root: str, rel: str) -> list[str]:
    path = resolve(root, rel)
    if path is None or not os.path.isdir(path):
        return []
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def join(*parts: str) -> str:
    return posixpath.join(*parts)
