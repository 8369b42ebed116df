"""Every capture under a receiver root, where it is: the root itself, or a directory an agent
asked for inside it (`ssh://user@host/wave-3/` puts its captures in `<root>/wave-3/`).

One walk for what a conversion server tells about itself: `coldclone-server status` (the state
of each capture) and a probe's READY.load (how many captures it receives now). Nothing is
opened for writing; links are not followed; dot-names (locks, the session and conversion
directories) and the inside of a capture are not walked.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ...manifest import MANIFEST
from .store import PARTIAL, is_capture_dir
from .unfinished import partial_state

# <root>/<asked-for dir>/.../<capture>: deeper than this is not a layout an agent makes
MAX_DEPTH = 4


@dataclass(frozen=True)
class Found:
    directory: str        # the directory holding it: the root or one inside
    name: str             # <id> (complete) or <id>.partial

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.name)

    @property
    def partial(self) -> bool:
        return self.name.endswith(PARTIAL)

    @property
    def capture_id(self) -> str:
        return self.name[:-len(PARTIAL)] if self.partial else self.name


def find(root: str) -> list[Found]:
    """The captures under root (complete ones hold manifest.json; `.partial` ones are unfinished)."""
    out: list[Found] = []
    stack = [(os.path.realpath(root), 0)]
    while stack:
        d, depth = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if not stat.S_ISDIR(e.stat(follow_symlinks=False).st_mode):
                    continue
            except OSError:
                continue
            if e.name.endswith(PARTIAL):
                out.append(Found(d, e.name))
            elif os.path.isfile(os.path.join(e.path, MANIFEST)):
                out.append(Found(d, e.name))
            elif not is_capture_dir(e.path) and depth + 1 < MAX_DEPTH:
                stack.append((e.path, depth + 1))
    return sorted(out, key=lambda f: f.path)


def state_of(found: Found) -> str:
    """live | dead | failed | unknown for a `.partial` (receive/unfinished.py), complete otherwise."""
    if not found.partial:
        return "complete"
    try:
        fd = os.open(found.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return "unknown"
    try:
        st, lfd = partial_state(fd, found.directory, found.name)
    except OSError:
        return "unknown"
    finally:
        os.close(fd)
    if lfd is not None:
        os.close(lfd)
    return st.state


def running(root: str) -> int:
    """Captures a receiver holds open under root right now."""
    return sum(1 for f in find(root) if f.partial and state_of(f) == "live")
