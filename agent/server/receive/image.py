"""qemu-img on a capture's images: a raw file to qcow2 (the converter's staging), a verified qcow2
to a raw copy (--keep-raw) with the proof they hold the same bytes, an image's facts (publish)."""

from __future__ import annotations

import json

from ...errors import CommandError, ServerError
from ...runcmd import run


def qemu_img_version() -> str:
    try:
        return run(["qemu-img", "--version"], quiet=True).stdout.splitlines()[0].strip()
    except CommandError:
        return "unavailable"


def qemu_img_error(what: str, e: CommandError) -> ServerError:
    text = e.stderr.lower()
    if "no space left" in text:
        return ServerError(f"conversion server disk full while {what}: {e}; free space in the receiver root",
                           code="disk_full")
    return ServerError(f"{what} failed: {e}", code="qemu_img")


def convert_to_qcow2(raw: str, qcow2: str) -> None:
    try:
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow2])
    except CommandError as e:
        raise qemu_img_error(f"converting {raw} to qcow2", e) from None


def convert(src: str, src_format: str, dst: str, dst_format: str, options: list[str] | tuple[str, ...] = ()) -> None:
    """Any image into another format (publish: raw for Ceph, a VMDK for VMware), standalone."""
    try:
        run(["qemu-img", "convert", "-q", "-f", src_format, "-O", dst_format, *options, src, dst])
    except CommandError as e:
        raise _fail(f"converting {src} to {dst_format}", e) from None


def compare(raw: str, qcow2: str) -> None:
    res = run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, qcow2], check=False)
    if res.returncode == 1:
        raise ServerError(f"qemu-img compare: {qcow2} differs from {raw}: {res.stdout.strip()}", code="qemu_img")
    if res.returncode != 0:
        raise qemu_img_error("comparing the qcow2 with the raw image", CommandError(res.argv, res.returncode, res.stderr))


def convert_to_raw(qcow2: str, raw: str) -> None:
    """--keep-raw: a raw copy made from the verified qcow2, and proven equal to it."""
    try:
        run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", qcow2, raw])
    except CommandError as e:
        raise qemu_img_error(f"converting {qcow2} to raw (--keep-raw)", e) from None
    compare(raw, qcow2)


def info(path: str) -> dict:
    try:
        return json.loads(run(["qemu-img", "info", "--output=json", path], quiet=True).stdout)
    except (CommandError, ValueError):
        return {}
