"""A machine's udev/sysfs facts as one JSON document.

`take()` records the running machine (this is how fixtures for new hardware
are collected: `coldclone discover --record machine.json`); `load()` reads
such a file back, with exactly the dict shape udevdb produces, so discovery
cannot tell a recording from the real thing.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import machine, mounts, udevdb

FORMAT = "coldclone-udev-snapshot/1"


def take() -> dict:
    return {
        "format": FORMAT,
        "machine": "",
        "block": udevdb.block_devices(),
        "net": udevdb.net_devices(),
        "mounts": mounts.read_proc_mounts(),
        "host": machine.read(),
    }


def load(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    for dev in data["block"]:
        # Recordings may leave out empty parts; give them the live shape.
        dev.setdefault("devlinks", [])
        dev.setdefault("driver", None)
        dev.setdefault("properties", {})
        dev.setdefault("attrs", {})
        dev.setdefault("slaves", [])
        dev.setdefault("holders", [])
        dev.setdefault("parents", [])
        dev.setdefault("subsystem", "block")
        for p in dev["parents"]:
            p.setdefault("attrs", {})
            p.setdefault("driver", None)
            p.setdefault("devtype", None)
    data.setdefault("net", [])
    data.setdefault("mounts", "")
    return data


def save(data: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
