"""The receiver's root: every file it writes stays inside it.

Names from the wire are validated (no '/', no '..', no leading dot, a short
safe alphabet), and every file is created relative to a directory file
descriptor with O_NOFOLLOW | O_EXCL, so neither a crafted name nor a symlink
planted in the root can make us write outside it.
"""

from __future__ import annotations

import errno
import os
import re

from ..errors import ServerError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PARTIAL = ".partial"


def validate_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name or name.endswith(PARTIAL):
        raise ServerError(
            f"refused {what} {name!r}: names may hold only letters, digits, '.', '_' and '-', "
            f"must not start with '.' or contain '..', at most 128 characters",
            code="bad_name",
        )
    return name


def resolve_root(forced_root: str, requested: str | None) -> str:
    """The directory a capture goes to: the forced root, or a directory inside it the agent asked for."""
    root = os.path.realpath(forced_root)
    if not requested or requested == "/":
        return root
    req = os.path.realpath(requested if os.path.isabs(requested) else os.path.join(root, requested))
    if req != root and not req.startswith(root + os.sep):
        raise ServerError(
            f"refused: the agent asked for {requested!r}, but this key is confined to {root}; "
            f"use ssh://user@host/ or a path inside {root}",
            code="outside_root",
        )
    return req


class Store:
    def __init__(self, root: str):
        self.root = root
        try:
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ServerError(
                f"receiver root {root} cannot be opened: {e.strerror}; create it and give the "
                f"receiving user write access", code="root_unusable") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise ServerError(
                f"receiver root {root} is not writable by this user (uid {os.getuid()}); "
                f"chown/chmod it or start coldclone-receive with another --root", code="root_unusable")
        st = os.statvfs(root)
        if st.f_flag & os.ST_RDONLY:
            raise ServerError(f"receiver root {root} is on a read-only filesystem", code="root_unusable")

    def make_capture_dir(self, capture_id: str) -> "CaptureDir":
        validate_name(capture_id, "capture id")
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
            dfd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            raise ServerError(f"cannot create {os.path.join(self.root, staging)}: {e.strerror}",
                              code="root_unusable") from None
        return CaptureDir(self, capture_id, staging, dfd)

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
        tmp = "." + validate_name(name, "file name") + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=self.fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        try:
            os.unlink(validate_name(name, "file name"), dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def complete(self) -> str:
        """The one step that marks a capture complete: staging dir renamed to its final name."""
        os.fsync(self.fd)
        os.rename(self.staging, self.capture_id, src_dir_fd=self.store.fd, dst_dir_fd=self.store.fd)
        os.fsync(self.store.fd)
        self.staging = self.capture_id
        return self.final_path
