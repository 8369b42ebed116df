"""How `make bench` times a run: the page cache dropped first, wall time, the run's own CPU and peak
RSS, and the whole machine's busy seconds (bench.py and its sections share these)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores, /proc/stat): the
    difference over a run counts both ends, sshd, qemu-img, the kernel's share; on a quiet
    machine that is the run's own CPU, and busy / cores is the least wall time it could take."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(argv_or_shell, shell=False) -> tuple[float, float, int, float]:
    """(wall s, CPU s, peak RSS bytes, machine busy s) of one run: the process and everything it
    waited for; the last is the whole machine's (machine_busy)."""
    drop_caches()
    b0 = machine_busy()
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv_or_shell, shell=shell, stdout=subprocess.DEVNULL, stderr=err,
                             executable="/bin/bash" if shell else None)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"benchmark run failed ({p.returncode}): {argv_or_shell}\n"
                               f"{err.read()[-2000:].decode(errors='replace')}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, machine_busy() - b0
