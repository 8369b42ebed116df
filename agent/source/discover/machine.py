"""The source server's processors and memory, read from sysfs and /proc (no pyudev): what
the launch plan's flavor suggestion follows on the conversion server.

Memory is the installed memory the kernel manages in memory blocks (their size times the
online ones), not MemTotal, which leaves out what the firmware and the kernel reserve (a
2 GiB machine reports ~1.9 GiB there); MemTotal only where sysfs has no memory blocks.
"""

from __future__ import annotations

import os

from ... import records
from ...manifest import SourceMachine


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_count(cpu_list: str) -> int:
    """CPUs in a kernel cpu list: "0-3,8,10-11" -> 7."""
    n = 0
    for part in filter(None, (p.strip() for p in cpu_list.split(","))):
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi else 1
    return n


def read(sys_root: str = "/sys", proc_root: str = "/proc") -> dict | None:
    """The snapshot's `machine` facts ({"cpus", "memory_bytes"}), None when unreadable."""
    online = _read(os.path.join(sys_root, "devices/system/cpu/online"))
    try:
        cpus = cpu_count(online) if online else (os.cpu_count() or 0)
    except ValueError:
        cpus = os.cpu_count() or 0
    memory = 0
    mem_dir = os.path.join(sys_root, "devices/system/memory")
    block = _read(os.path.join(mem_dir, "block_size_bytes"))
    if block:
        try:
            size = int(block, 16)
            memory = size * sum(1 for n in os.listdir(mem_dir) if n.startswith("memory")
                                and _read(os.path.join(mem_dir, n, "online")) == "1")
        except (OSError, ValueError):
            memory = 0
    if not memory:
        for line in (_read(os.path.join(proc_root, "meminfo")) or "").splitlines():
            key, _, value = line.partition(":")
            if key == "MemTotal" and value.split() and value.split()[0].isdigit():
                memory = int(value.split()[0]) * 1024
    if cpus < 1 or memory < 1:
        return None
    return {"cpus": cpus, "memory_bytes": memory}


def from_snapshot(facts: object) -> SourceMachine | None:
    """The recorded facts as the model (None for a recording from before they were taken)."""
    if not isinstance(facts, dict):
        return None
    try:
        return records.decode(facts, SourceMachine, "machine")
    except records.RecordError:   # a hand-edited recording: no machine rather than no inventory
        return None
