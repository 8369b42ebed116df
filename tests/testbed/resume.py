"""Watching a capture's staging directory on the receiver, to cut a capture at a chosen point:
the resume tests and `make bench`'s resume line kill one end once enough of a disk has arrived."""

from __future__ import annotations

import os
import subprocess
import time


def raw_bytes(rx_dir: str, cid: str, disk: str | None = None) -> int:
    """Bytes that reached the receiver's raw image of `disk` (None: the capture's only raw file)
    in capture `cid` under `rx_dir`. Allocated blocks, not the file size (the raw file is made
    full size up front): exact for a source without zeros. 0 while there is no such file; a disk
    already verified and converted has none left either (its raw file is removed)."""
    partial = os.path.join(rx_dir, f"{cid}.partial")
    if disk is None:
        raws = [n for n in os.listdir(partial) if n.endswith(".raw")] if os.path.isdir(partial) else []
        if not raws:
            return 0
        name = raws[0]
    else:
        name = disk + ".raw"
    try:
        return os.stat(os.path.join(partial, name)).st_blocks * 512
    except FileNotFoundError:
        return 0


def wait_raw(proc: subprocess.Popen, rx_dir: str, cid: str, at: int, disk: str | None = None,
             timeout: float = 120) -> None:
    """Until `at` bytes of `disk` (see raw_bytes) have arrived; an error if the capture ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if raw_bytes(rx_dir, cid, disk) >= at:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(f"the capture ended (exit {proc.returncode}) before {at} bytes of "
                               f"{disk or 'its disk'} arrived: {out}{err}")
        time.sleep(0.02)
    raise RuntimeError(f"{at} bytes of {disk or 'the disk'} did not arrive within {timeout:.0f} s")
