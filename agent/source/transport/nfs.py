"""nfs://host/export/path: the agent mounts the export and the local receiver writes into it.

Same receiver, checks, manifest and qcow2/raw choice as over SSH (the
receiver runs on this machine through agent.source.transport.local, and converts
with this machine's qemu-img). The mount is `hard` (a server that goes away
stalls the capture instead of corrupting an image) and is undone by the
Target's close().
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from ...errors import CommandError, ConnectionError_, ServerError
from ...runcmd import run
from .mountpoint import make_mountpoint
from .mountpoint import unmount as _unmount
from .url import TargetURL

log = logging.getLogger("coldclone.nfs")

MOUNT_TIMEOUT = 90.0


def mount_options(url: TargetURL) -> str:
    opts = ["rw", "hard", "timeo=600", "retrans=2", "retry=0"]
    if url.nfs_version:
        opts.append(f"vers={url.nfs_version}")
        if url.nfs_version == "3":
            opts.append("nolock")   # no rpc.statd on the live system; nothing here takes locks
    if url.port != 2049:
        opts.append(f"port={url.port}")
    return ",".join(opts)


def explain(url: TargetURL, err: CommandError) -> ConnectionError_ | ServerError:
    """mount.nfs's words -> what the operator should do."""
    spec = f"{url.host}:{url.path}"
    text = (err.stderr or "").lower()
    if err.returncode is None and "timed out" in str(err):
        return ConnectionError_(f"NFS server {url.host} did not answer within {MOUNT_TIMEOUT:.0f} s mounting "
                                f"{spec}; check the address, the network and that nfsd runs there (port {url.port})")
    if "helper program" in text:
        return ConnectionError_(f"cannot mount {spec}: this system has no NFS mount helper "
                                f"(install the Debian package nfs-common)")
    if "unknown filesystem type" in text:
        return ConnectionError_(f"cannot mount {spec}: this kernel has no NFS client (nfs module missing)")
    if any(w in text for w in ("connection refused", "no route to host", "network is unreachable",
                               "connection timed out", "timed out", "name or service not known",
                               "failed to resolve", "host is down")):
        return ConnectionError_(f"NFS server {url.host} unreachable mounting {spec} ({_last(err)}); check the "
                                f"address, the network and that nfsd runs there (port {url.port})")
    if "access denied" in text or "permission denied" in text or "operation not permitted" in text:
        return ConnectionError_(f"NFS server {url.host} refuses to export {url.path} to this machine "
                                f"({_last(err)}); add this machine's address to the export's clients "
                                f"(/etc/exports or the filer's export policy)")
    if "no such file or directory" in text or "not exported" in text or "does not exist" in text:
        return ConnectionError_(f"NFS export {spec} not found ({_last(err)}); check the path with "
                                f"`showmount -e {url.host}` (NFSv3) or the server's export list")
    return ConnectionError_(f"cannot mount NFS export {spec}: {err}")


def _last(err: CommandError) -> str:
    lines = [ln.strip() for ln in (err.stderr or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {err.returncode}"


def _check_writable(url: TargetURL, mountpoint: str) -> None:
    """Root is usually squashed to nobody on an export: find out now, not after the first disk."""
    name = os.path.join(mountpoint, f".coldclone-write-test-{os.getpid()}")
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ServerError(
            f"NFS export {url.host}:{url.path} is mounted but not writable by this machine ({e.strerror}); "
            f"export it rw, and let root write (no_root_squash) or make the directory writable by "
            f"the squashed user (nobody)", code="root_unusable") from None


def mount(url: TargetURL) -> tuple[str, Callable[[], None]]:
    """Mount the export; return (mount point, a callable that unmounts it)."""
    mountpoint = make_mountpoint("nfs-")
    spec = f"{url.host}:{url.path}"
    try:
        run(["mount", "-t", "nfs", "-o", mount_options(url), spec, mountpoint], timeout=MOUNT_TIMEOUT)
    except CommandError as e:
        os.rmdir(mountpoint)
        raise explain(url, e) from None
    log.info("mounted %s at %s", spec, mountpoint)

    def unmount() -> None:
        _unmount(mountpoint, f"the NFS export {spec}")

    try:
        _check_writable(url, mountpoint)
    except ServerError:
        unmount()
        raise
    return mountpoint, unmount

