"""The receiver's root: every file it writes stays inside it.

Names from the wire are validated (no '/', no '..', no leading dot, a short
safe alphabet), and every file is created relative to a directory file
descriptor with O_NOFOLLOW | O_EXCL, so neither a crafted name nor a symlink
planted in the root can make us write outside it.

A capture directory is never a root: a root inside a capture (`<id>.partial` or a
complete `<id>`) would let one session nest a capture in another one's images.
The names a capture directory holds (manifest.json, failure.json, images, temp
files) are never capture ids, for the same reason.

While a receiver works in `<id>.partial` it holds an flock on `<id>.partial/.coldclone-receive.lock`
(which holds its pid): a `.partial` whose lock is free belongs to a receiver that
died (kill -9, power loss): receive/unfinished.py finds those (`coldclone-receive --gc`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from typing import Callable

from ...errors import ServerError
from ...manifest import MANIFEST

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PARTIAL = ".partial"
LOCK = ".coldclone-receive.lock"
FAILURE = "failure.json"
# coldclone-convert writes <disk>.kvm.qcow2 beside each verified <disk>.qcow2; named here, in the
# package the converter builds on, so the receiver can tell the agent where they will be.
CONVERTED_SUFFIX = ".kvm.qcow2"
# What a capture directory holds, by name or suffix: never a capture id.
RESERVED_NAMES = (MANIFEST, FAILURE)
RESERVED_SUFFIXES = (PARTIAL, ".raw", ".qcow2", ".tmp", ".json", ".lock", ".journal")


def validate_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name or name.endswith(PARTIAL):
        raise ServerError(
            f"refused {what} {name!r}: names may hold only letters, digits, '.', '_' and '-', "
            f"must not start with '.' or contain '..', at most 128 characters",
            code="bad_name",
        )
    return name


def validate_disk_name(name: object) -> str:
    """A disk name from the wire: a valid name with no '.' in it.

    The receiver and coldclone-convert name a disk's files `<disk>` + a suffix that starts with
    '.' (<disk>.raw, <disk>.qcow2, <disk>.journal, .<disk>.qcow2.tmp, <disk>.kvm.qcow2). With no
    '.' in a disk name, the part before the first '.' of any such file name is its disk, so
    no name derived from one disk can be another disk's name or a name derived from it: a disk
    `sda.kvm` would have its verified image at sda.kvm.qcow2, where disk sda's converted image
    goes. The capture files that are no disk's (manifest.json, failure.json, conversion.log
    ...) hold a '.' too, so no disk name is one of them either. Kernel names have no '.', and
    the agent's stream names (devnames.stream_name) never do."""
    name = validate_name(name, "disk name")
    if "." in name:
        raise ServerError(
            f"refused disk name {name!r}: a disk name may not contain '.': the server names the disk's "
            f"files <disk>.raw, <disk>.qcow2, <disk>.journal and <disk>.kvm.qcow2, and a dotted "
            f"name would take another disk's ({name.split('.', 1)[0]}'s); name it with letters, "
            f"digits, '_' and '-'", code="bad_name")
    return name


def converted_image_name(disk: str) -> str:
    """The file coldclone-convert writes for a captured disk, inside the capture dir."""
    return disk + CONVERTED_SUFFIX


def validate_capture_id(capture_id: object) -> str:
    name = validate_name(capture_id, "capture id")
    if name in RESERVED_NAMES or name.endswith(RESERVED_SUFFIXES):
        raise ServerError(
            f"refused capture id {name!r}: {', '.join(RESERVED_NAMES)} and names ending in "
            f"{', '.join(RESERVED_SUFFIXES)} are reserved for the files of a capture; choose another id",
            code="bad_name")
    return name


def is_capture_dir(path: str) -> bool:
    """A directory some capture owns: staging (`.partial`), or holding a manifest, failure or lock."""
    if os.path.basename(path).endswith(PARTIAL):
        return True
    return any(os.path.lexists(os.path.join(path, n)) for n in (MANIFEST, FAILURE, LOCK))


def resolve_root(forced_root: str, requested: str | None) -> str:
    """The directory a capture goes to: the forced root, or a directory inside it the agent asked for.

    Never inside a capture: not `<id>.partial`, not a complete `<id>`, nor below either.
    """
    root = os.path.realpath(forced_root)
    if not requested or requested == "/":
        req = root
    else:
        req = os.path.realpath(requested if os.path.isabs(requested) else os.path.join(root, requested))
    if req != root and not req.startswith(root + os.sep):
        raise ServerError(
            f"refused: the agent asked for {requested!r}, but this key is confined to {root}; "
            f"use ssh://user@host/ or a path inside {root}",
            code="outside_root",
        )
    # Every directory from / down to the one asked for: the forced --root itself must not be
    # inside a capture either (a mistyped authorized_keys line).
    d = req
    while True:
        if is_capture_dir(d):
            raise ServerError(
                f"refused: {req} is inside the capture directory {d}; a capture is never a root "
                f"for another one: use ssh://user@host/ or another directory of the root",
                code="outside_root")
        parent = os.path.dirname(d)
        if parent == d:
            return req
        d = parent


def free_bytes(path: str) -> int:
    """What an unprivileged writer may still put on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_atomic_at(dir_fd: int, name: str, data: bytes) -> None:
    """Replace dir/name in one step (temp file, fsync, rename): a reader sees the old file
    or the new one, never half of it. Used for manifest.json by the receiver and by the
    stages after it (publish)."""
    tmp = "." + validate_name(name, "file name") + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                 dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        # A disk that filled up while writing the manifest keeps no half-written temp file.
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


class Store:
    def __init__(self, root: str):
        self.root = root
        try:
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ServerError(
                f"receiver root {root} cannot be opened: {e.strerror}; create it and give the "
                f"receiving user write access", code="root_unusable") from None
        try:
            if not os.access(root, os.W_OK | os.X_OK):
                raise ServerError(
                    f"receiver root {root} is not writable by this user (uid {os.getuid()}); "
                    f"chown/chmod it or start coldclone-receive with another --root", code="root_unusable")
            st = os.statvfs(root)
            if st.f_flag & os.ST_RDONLY:
                raise ServerError(f"receiver root {root} is on a read-only filesystem", code="root_unusable")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def make_capture_dir(self, capture_id: str) -> "CaptureDir":
        validate_capture_id(capture_id)
        for name in (capture_id, capture_id + PARTIAL):
            try:
                os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            raise ServerError(
                f"capture {capture_id} already exists in {self.root} ({name}); "
                f"start a new capture (a new id) or remove the old one", code="exists")
        staging = capture_id + PARTIAL
        try:
            os.mkdir(staging, 0o750, dir_fd=self.fd)
        except FileExistsError:
            # Another session took the same id between the check above and here.
            raise ServerError(f"capture {capture_id} already exists in {self.root} ({staging}); "
                              f"start a new capture (a new id)", code="exists") from None
        except OSError as e:
            raise ServerError(f"cannot create {os.path.join(self.root, staging)}: {e.strerror}",
                              code="root_unusable") from None
        return self._open_staging(capture_id, staging, CaptureDir.lock)

    def resume_capture_dir(self, capture_id: str) -> tuple["CaptureDir", bool]:
        """The unfinished capture `<id>.partial` to continue (True), or a new one (False) when
        there is none. A complete capture is refused as in make_capture_dir; a `.partial` whose
        receiver is still alive (an earlier session the network cut, not yet timed out) is
        refused with code `busy`, which a reconnecting agent retries."""
        validate_capture_id(capture_id)
        staging = capture_id + PARTIAL
        if os.path.lexists(os.path.join(self.root, capture_id, MANIFEST)):
            raise ServerError(f"capture {capture_id} is already complete in {self.root} ({capture_id}, "
                              f"its manifest.json lists every verified disk): nothing to resume; start a "
                              f"new capture (a new id) to capture again", code="exists")
        try:
            st = os.stat(staging, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return self.make_capture_dir(capture_id), False
        if not stat.S_ISDIR(st.st_mode):
            raise ServerError(f"capture {capture_id}: {os.path.join(self.root, staging)} is not a directory; "
                              f"remove it or start a new capture (a new id)", code="exists")
        if os.path.lexists(os.path.join(self.root, capture_id)):
            raise ServerError(f"capture {capture_id} already exists in {self.root} ({capture_id}); "
                              f"start a new capture (a new id) or remove the old one", code="exists")
        return self._open_staging(capture_id, staging, CaptureDir.take_over), True

    def _open_staging(self, capture_id: str, staging: str, claim: Callable[["CaptureDir"], None]) -> "CaptureDir":
        """The staging directory opened (never through a link) and claimed by this receiver."""
        dfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        cap = CaptureDir(self, capture_id, staging, dfd)
        try:
            claim(cap)
        except BaseException:
            cap.close()
            raise
        return cap

    def open_capture(self, capture_id: str) -> "CaptureDir":
        """A complete capture (its final name), for the stages after the receiver: conversion
        writes its images and its manifest section through the same confined calls."""
        validate_name(capture_id, "capture id")
        try:
            dfd = os.open(capture_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            raise ServerError(f"cannot open capture {os.path.join(self.root, capture_id)}: {e.strerror}",
                              code="not_found") from None
        return CaptureDir(self, capture_id, capture_id, dfd)


class CaptureDir:
    def __init__(self, store: Store, capture_id: str, staging: str, fd: int):
        self.store = store
        self.capture_id = capture_id
        self.staging = staging
        self.fd = fd
        self.lock_fd: int | None = None

    def lock(self) -> None:
        """Mark the capture as owned by this live process (flock, held until exit; pid for people)."""
        self.lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                               dir_fd=self.fd)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())

    def take_over(self) -> None:
        """Own an unfinished capture again: its lock must be free (its receiver is gone)."""
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=self.fd)
        except OSError as e:
            raise ServerError(f"cannot lock {self.path}: {e.strerror}", code="io") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ServerError(
                f"capture {self.capture_id} is still being received (receiver pid {pid or '?'}: an "
                f"earlier session that has not ended yet); try again in a minute", code="busy") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def open_file(self, name: str) -> int:
        """An existing file of the capture, read-write (a resumed disk's raw image)."""
        validate_name(name, "file name")
        try:
            return os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            raise ServerError(f"cannot open {self.file_path(name)}: {e.strerror}", code="io") from None

    def close(self) -> None:
        """Let go of the directory (the lock with it: a capture still locked here is abandoned)."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unlock(self) -> None:
        """The capture is over (complete, or failed with failure.json): nothing left to own."""
        if self.lock_fd is not None:
            try:
                os.unlink(LOCK, dir_fd=self.fd)
            except OSError:
                pass
            os.close(self.lock_fd)
            self.lock_fd = None

    @property
    def path(self) -> str:
        return os.path.join(self.store.root, self.staging)

    @property
    def final_path(self) -> str:
        return os.path.join(self.store.root, self.capture_id)

    def file_path(self, name: str) -> str:
        return os.path.join(self.path, validate_name(name, "file name"))

    def create(self, name: str) -> int:
        validate_name(name, "file name")
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o640, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise ServerError(f"refused: {name} sent twice in capture {self.capture_id}", code="bad_name") from None
            raise ServerError(f"cannot create {self.file_path(name)}: {e.strerror}", code="io") from None

    def write_atomic(self, name: str, data: bytes) -> None:
        write_atomic_at(self.fd, name, data)

    def sync(self, name: str) -> None:
        """Flush a file of the capture (one written by another process: qemu-img) to disk."""
        validate_name(name[1:] if name.startswith(".") and name.endswith(".tmp") else name, "file name")
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, name: str) -> None:
        # Our own temp files are dot-names ("." + a valid name + ".tmp"): the rule for names from
        # the wire holds for the part after the dot.
        validate_name(name[1:] if name.startswith(".") and name.endswith(".tmp") else name, "file name")
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def complete(self) -> str:
        """The one step that marks a capture complete: staging dir renamed to its final name."""
        self.unlock()
        os.fsync(self.fd)
        os.rename(self.staging, self.capture_id, src_dir_fd=self.store.fd, dst_dir_fd=self.store.fd)
        os.fsync(self.store.fd)
        self.staging = self.capture_id
        return self.final_path

