"""Watching a capture's staging directory on the receiver, to cut a capture at a chosen point:
the resume tests and `make bench`'s resume line kill one end once enough of a disk has arrived."""

from __future__ import annotations

import os
import subprocess
import time


def image_bytes(rx_dir: str, cid: str, disk: str | None = None) -> int:
    """Bytes that reached the receiver's image of `disk` (None: the capture's only image) in
    capture `cid` under `rx_dir`: allocated blocks of `<disk>.qcow2` (or `<disk>.raw`), exact for a
    source without zeros but for a qcow2's metadata (a few hundred KiB). 0 while there is none."""
    partial = os.path.join(rx_dir, f"{cid}.partial")
    if disk is None:
        names = sorted(n for n in os.listdir(partial) if n.endswith((".qcow2", ".raw"))) \
            if os.path.isdir(partial) else []
    else:
        names = [disk + ".qcow2", disk + ".raw"]
    for name in names:
        try:
            return os.stat(os.path.join(partial, name)).st_blocks * 512
        except FileNotFoundError:
            continue
    return 0


def wait_image(proc: subprocess.Popen, rx_dir: str, cid: str, at: int, disk: str | None = None,
               timeout: float = 120) -> None:
    """Until `at` bytes of `disk` (see image_bytes) have arrived; an error if the capture ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if image_bytes(rx_dir, cid, disk) >= at:
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(f"the capture ended (exit {proc.returncode}) before {at} bytes of "
                               f"{disk or 'its disk'} arrived: {out}{err}")
        time.sleep(0.02)
    raise RuntimeError(f"{at} bytes of {disk or 'the disk'} did not arrive within {timeout:.0f} s")
