"""The image a disk is received into: one small object that writes, zeroes, reads back and
flushes it, the same for a fresh capture, a resumed one and (issue 22) a delta written into an
existing image.

`Qcow2Image` writes the final qcow2 directly, through qemu's own block layer: qemu-nbd (from
qemu-utils, which every conversion server and the ISO have already; qemu-storage-daemon would
bring qemu-system-common and its graphics libraries into the ISO) serves the image over NBD on a
private unix socket in the capture directory (`.<disk>.nbd`, umask 077), and libnbd
(Debian's python3-libnbd) writes, zeroes, reads and flushes it. No raw copy, no conversion and no compare after the last byte: what the receiver
reads back (the read-back digest) is the qcow2 as qemu reads it, and `qemu-img check` proves its
metadata consistent when it is closed. Nothing here knows the qcow2 format: qemu does.

`RawImage` is a sparse raw file (format raw, and the calibration probe's unnamed file).

Both: `pwrite`, `write_zeroes` (unallocated afterwards: a hole, or an unallocated cluster),
`pread`, `data_at` and `data_end` (the next byte that is not known zero, and the next one that
is: SEEK_DATA / SEEK_HOLE for a raw file, NBD block status for a qcow2, so the read-back skips a
qcow2's unallocated clusters as it skips a raw file's holes, and the resume's discard zeroes
only the ranges that hold something: `stored`), `flush` (durable: the resume journal vouches for
what was flushed), `reader()` (a second handle for the read-back thread), `close`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time

from ...errors import CommandError, ServerError
from ...runcmd import Service, run
from .image import qemu_img_error

log = logging.getLogger("coldclone.receive")

# NBD requests qemu accepts at most this large (its NBD server's maximum block size)
MAX_REQUEST = 32 << 20
SERVE_START_SECONDS = 30.0


class RawImage:
    """A raw file written in place (a sparse file: ZERO records leave holes)."""

    format = "raw"

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def pwrite(self, data, offset: int) -> None:
        mv, done = memoryview(data), 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], offset + done)

    def write_zeroes(self, offset: int, length: int) -> None:
        # a hole where the bytes were (fallocate PUNCH_HOLE | KEEP_SIZE), never written zeros
        _punch(self.fd, offset, length)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def data_at(self, offset: int, size: int) -> int:
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError:     # ENXIO: only a hole from here on; EINVAL: no SEEK_DATA here
            return size

    def data_end(self, offset: int, size: int) -> int:
        try:
            return min(os.lseek(self.fd, offset, os.SEEK_HOLE), size)
        except OSError:
            return size

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def reader(self) -> "RawImage":
        return RawImage(os.dup(self.fd), self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _punch(fd: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fallocate(PUNCH_HOLE): {os.strerror(e)}")


def _nbd():
    """libnbd's Python bindings (Debian: python3-libnbd; scripts/setup.sh and the ISO make them
    visible to the venv)."""
    try:
        import nbd
    except ImportError:
        raise ServerError("the conversion server lacks libnbd's Python bindings (Debian package "
                          "python3-libnbd): install it, then run scripts/setup.sh again", code="io") from None
    return nbd


class Qcow2Image:
    """A qcow2 written through qemu-nbd and libnbd (see the module's docstring)."""

    format = "qcow2"

    def __init__(self, cap_dir: str, name: str, path: str, daemon: Service, socket: str, handle):
        self.cap_dir = cap_dir
        self.name = name          # the image file, in the capture directory
        self.path = path
        self.daemon = daemon
        self.socket = socket      # the daemon's socket, as this process connects to it
        self.h = handle
        self._readers: list = []

    # --------------------------------------------------------------- opening

    @classmethod
    def create(cls, cap_dir: str, dir_fd: int, name: str, size: int) -> "Qcow2Image":
        """A new, empty (all unallocated) qcow2 of `size` bytes."""
        path = os.path.join(cap_dir, name)
        try:
            run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
        except CommandError as e:
            raise qemu_img_error(f"creating {path}", e) from None
        return cls.open(cap_dir, dir_fd, name)

    @classmethod
    def open(cls, cap_dir: str, dir_fd: int, name: str, repair: bool = False) -> "Qcow2Image":
        """An existing qcow2 of the capture, served and connected. repair: first free the clusters
        a killed writer may have leaked (`qemu-img check -r leaks`: allocated, referenced by
        nothing, so no data changes; a corruption is refused, never repaired)."""
        nbd = _nbd()
        path = os.path.join(cap_dir, name)
        if repair:
            res = run(["qemu-img", "check", "-q", "-r", "leaks", "-f", "qcow2", path], check=False)
            if res.returncode not in (0, 3):      # 3: leaks found (and freed)
                raise ServerError(f"the held image {path} is damaged (qemu-img check: exit {res.returncode}: "
                                  f"{(res.stderr or res.stdout).strip()[-300:]}); start a new capture (a new id)",
                                  code="journal")
        sock = "." + name.rsplit(".", 1)[0] + ".nbd"
        try:
            os.unlink(sock, dir_fd=dir_fd)    # a killed receiver's
        except FileNotFoundError:
            pass
        # qemu-nbd (qemu-utils, already on every conversion server and in the ISO): qemu's block
        # layer serving the one image; two clients, the writer and the read-back
        # (qemu-nbd wants an absolute socket path: its own cwd, the capture directory, through
        # /proc, keeps it short whatever the directory's path)
        # (--persistent: it ends when close() stops it, not when a client happens to disconnect)
        argv = ["qemu-nbd", "--format=qcow2", f"--socket=/proc/self/cwd/{sock}", "--shared=2", "--persistent",
                "--discard=unmap",
                "--cache=writeback", "--aio=threads", "--export-name=disk", name]
        # through /proc/self/fd: a socket path longer than sun_path (108 bytes) is never a problem
        here = f"/proc/self/fd/{dir_fd}/{sock}"
        deadline = time.monotonic() + SERVE_START_SECONDS
        while True:
            daemon = Service(argv, cwd=cap_dir, umask=0o077)
            while time.monotonic() < deadline and daemon.alive():
                try:
                    h = nbd.NBD()
                    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
                    h.set_export_name("disk")
                    h.connect_unix(here)
                    return cls(cap_dir, name, path, daemon, here, h)
                except nbd.Error:
                    time.sleep(0.02)
            text = daemon.stop()
            # the qemu-nbd of a receiver killed a moment ago may still hold the image's lock
            if "lock" in text and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise ServerError(f"qemu-nbd could not serve {path}: {text.strip()[-500:] or 'no answer'}",
                              code="io")

    def reader(self) -> "Qcow2Reader":
        """A second connection for the read-back thread (libnbd handles are not shared)."""
        nbd = _nbd()
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.set_export_name("disk")
        try:
            h.connect_unix(self.socket)
        except nbd.Error as e:
            raise _os_error(e, f"connecting to the image server of {self.path}") from None
        r = Qcow2Reader(h, self.path)
        self._readers.append(r)
        return r

    # --------------------------------------------------------------- the five operations

    def pwrite(self, data, offset: int) -> None:
        mv = memoryview(data)
        for start in range(0, len(mv), MAX_REQUEST):
            try:
                self.h.pwrite(mv[start:start + MAX_REQUEST], offset + start)
            except _nbd().Error as e:
                raise _os_error(e, f"writing {self.path} at byte {offset + start}") from None

    def write_zeroes(self, offset: int, length: int) -> None:
        """Zeros that take no space: qemu leaves (or makes) the clusters unallocated."""
        end = offset + length
        while offset < end:
            n = min(end - offset, 1 << 30)
            try:
                self.h.zero(n, offset)
            except _nbd().Error as e:
                raise _os_error(e, f"zeroing {self.path} at byte {offset}") from None
            offset += n

    def pread(self, n: int, offset: int) -> bytes:
        return _pread(self.h, n, offset, self.path)

    def data_at(self, offset: int, size: int) -> int:
        return _seek(self.h, offset, size, self.path, zero=False)

    def data_end(self, offset: int, size: int) -> int:
        return _seek(self.h, offset, size, self.path, zero=True)

    def size(self) -> int:
        return self.h.get_size()

    def flush(self) -> None:
        """Data and qcow2 metadata on stable storage (NBD flush: qemu flushes and fdatasyncs)."""
        try:
            self.h.flush()
        except _nbd().Error as e:
            raise _os_error(e, f"flushing {self.path}") from None

    def close(self) -> None:
        """Disconnect, stop qemu-nbd (it has flushed on every checkpoint; a clean exit flushes
        again), remove its socket."""
        for r in self._readers:
            r.close()
        self._readers.clear()
        if self.h is not None:
            try:
                self.h.shutdown()
            except Exception:   # a daemon already gone: nothing to shut down
                pass
            self.h = None       # (libnbd closes a handle when it is freed)
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None
            try:
                os.unlink(self.socket)
            except OSError:
                pass

    # --------------------------------------------------------------- after closing

    @staticmethod
    def check(path: str) -> None:
        """`qemu-img check`: the qcow2's metadata consistent (no corruption, no leaked or
        doubly used clusters). Reads metadata only."""
        res = run(["qemu-img", "check", "-q", "-f", "qcow2", path], check=False)
        if res.returncode != 0:
            raise ServerError(f"qemu-img check of {path} failed (exit {res.returncode}): "
                              f"{(res.stderr or res.stdout).strip()[-500:]}; the conversion server stored a "
                              f"damaged image: check its disk", code="qemu_img")


class Qcow2Reader:
    """The read-back's own NBD connection: pread and data_at only."""

    def __init__(self, h, path: str):
        self.h = h
        self.path = path

    def pread(self, n: int, offset: int) -> bytes:
        return _pread(self.h, n, offset, self.path)

    def data_at(self, offset: int, size: int) -> int:
        return _seek(self.h, offset, size, self.path, zero=False)

    def close(self) -> None:
        if self.h is not None:
            try:
                self.h.shutdown()
            except Exception:
                pass
            self.h = None       # (libnbd closes a handle when it is freed)


def _pread(h, n: int, offset: int, path: str) -> bytes:
    nbd = _nbd()
    parts = []
    for start in range(0, n, MAX_REQUEST):
        try:
            parts.append(h.pread(min(MAX_REQUEST, n - start), offset + start))
        except nbd.Error as e:
            raise _os_error(e, f"reading {path} at byte {offset + start}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _seek(h, offset: int, size: int, path: str, zero: bool) -> int:
    """NBD block status (base:allocation) as SEEK_DATA (zero=False: the first byte at or after
    offset that qemu does not report as zero; unallocated clusters are skipped as holes are in
    a raw file) and SEEK_HOLE (zero=True: the first one it does). Capped at size. An answer
    that does not move on gives offset: the caller then reads (or discards) that byte."""
    nbd = _nbd()
    start = offset
    while offset < size:
        found: list[tuple[bool, int]] = []

        def extents(meta, off, entries, err):
            pos = off
            for i in range(0, len(entries) - 1, 2):
                if bool(entries[i + 1] & nbd.STATE_ZERO) == zero:
                    found.append((True, pos))
                    return 0
                pos += entries[i]
            found.append((False, pos))      # none of the kind sought up to pos
            return 0

        try:
            h.block_status(min(size - offset, 1 << 30), offset, extents)
        except nbd.Error as e:
            raise _os_error(e, f"reading the allocation of {path} at byte {offset}") from None
        if not found:
            return offset                   # no answer: take the byte as the kind sought
        hit, pos = found[0]
        if hit:
            return min(max(pos, start), size)
        if pos <= offset:
            return offset
        offset = pos
    return size


def _os_error(e, what: str) -> OSError:
    """An NBD error as the OSError the receiver's one handler words (ENOSPC: disk_full)."""
    # (libnbd's Error carries the errno number as args[1]; its .errno is the name, "ENOSPC")
    code = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) and e.args[1] else errno.EIO
    return OSError(code, f"{what}: {getattr(e, 'string', str(e))}")


Image = RawImage | Qcow2Image


def image_name(disk: str, fmt: str) -> str:
    """The file a disk is received into: `<disk>.qcow2`, or `<disk>.raw` for format raw."""
    return f"{disk}.{fmt}"


def stored(image: Image, start: int, size: int) -> list[tuple[int, int]]:
    """The ranges at or after `start` that hold something (not known zero), from the image's
    own data_at / data_end."""
    out, off = [], start
    while off < size:
        off = image.data_at(off, size)
        if off >= size:
            break
        end = image.data_end(off, size)
        end = size if end <= off else end
        out.append((off, end))
        off = end
    return out


def discard_from(image: Image, start: int, size: int) -> None:
    """Zero (unallocate) whatever is stored at or after `start`: bytes a killed receiver wrote
    past its last checkpoint, which nothing vouches for. Only where something is stored: zeroing
    a qcow2's unallocated range would allocate its metadata."""
    for a, b in stored(image, start, size):
        image.write_zeroes(a, b - a)
