"""The unfinished captures in a receiver's root: what state each `.partial` is in, which of them
hold disks an agent asks about (a lookup), and `coldclone-receive --gc`.

A `.partial` is one of:
- live: a receiver holds its lock (a capture running, or a cut session not yet timed out);
- dead: its lock file names a pid but nobody holds the lock (the receiver was killed, the
  server lost power);
- failed: the receiver ended it and wrote failure.json (`resumable: true` when a cut session
  left journals to continue from);
- unknown: neither (a receiver from before locks existed).

Live, dead and resumable failed captures can all be continued (`coldclone capture --resume ID`):
their journals (receive/journal.py) vouch for what is held. --gc turns a dead one into what its
receiver would have left had it lived: a resumable failed capture when its journals hold data,
else a failed one with its files removed. A live one is never touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass

from ... import protocol as P
from ...errors import ServerError
from . import journal as J
from .store import FAILURE, LOCK, PARTIAL, CaptureDir, Store


@dataclass(frozen=True)
class PartialState:
    path: str
    state: str          # live | dead | failed | unknown
    pid: int | None
    detail: str


def partial_state(root_fd: int, root: str, name: str) -> tuple[PartialState, int | None]:
    """What a `.partial` is, and (for a dead one) the lock's fd still held by us."""
    path = os.path.join(root, name)
    dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        try:
            lfd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            if os.path.lexists(os.path.join(path, FAILURE)):
                return PartialState(path, "failed", None, "failed; failure.json tells why"), None
            return PartialState(path, "unknown", None, "no lock and no failure.json (an older receiver?)"), None
        try:
            fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lfd)
            return PartialState(path, "live", None, "a running receiver holds its lock"), None
        text = os.pread(lfd, 32, 0).decode(errors="replace").strip()
        if not text.isdigit():
            # The lock file is created, then locked, then the pid written: this one is just starting.
            os.close(lfd)
            return PartialState(path, "live", None, "being created"), None
        return PartialState(path, "dead", int(text), f"receiver pid {text} is gone"), lfd
    finally:
        os.close(dfd)


def _partials(store: Store) -> list[str]:
    return [name for name in sorted(os.listdir(store.fd))
            if name.endswith(PARTIAL) and os.path.isdir(os.path.join(store.root, name))
            and not os.path.islink(os.path.join(store.root, name))]


def _open(store: Store, name: str) -> CaptureDir:
    dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store.fd)
    return CaptureDir(store, name[:-len(PARTIAL)], name, dfd)


def _identity(h: P.DiskHeader) -> P.DiskIdentity:
    """A journaled disk as the agent described it in its DISK header (capture.source.SourceDisk facts)."""
    f = P.JsonFields(h.source, f"disk {h.name!r:.40} source")
    try:
        return P.DiskIdentity.of(h.name, h.size, serial=f.str("serial"), wwid=f.str("wwid"))
    except P.ProtocolError:
        return P.DiskIdentity(h.name, h.size)


def _match(journals: dict[str, J.DiskJournal], wanted: tuple[P.DiskIdentity, ...]
           ) -> tuple[str | None, list[tuple[J.DiskJournal, P.DiskIdentity]]]:
    """The weakest disk match when every journaled disk is one of `wanted` (else None), and which
    of `wanted` each journaled disk is."""
    strength, pairs = None, []
    for j in journals.values():
        ident = _identity(j.header)
        how, w = next(((m, w) for w in wanted if (m := w.matched_by(ident))), (None, None))
        if how is None:
            return None, []
        pairs.append((j, w))
        if strength is None or how == P.DiskIdentity.WEAK:
            strength = how
    return strength, pairs


def _heads_agree(cap: CaptureDir, pairs: list[tuple[J.DiskJournal, P.DiskIdentity]]) -> bool | None:
    """Whether the first bytes held of each disk are the agent's (DiskIdentity.head): False when one
    differs, None when no disk could be checked (nothing held that far yet, a disk already verified
    and converted, or mode=used, whose free blocks near the start may be holes here)."""
    agree = None
    for j, w in pairs:
        n = min(P.DiskIdentity.HEAD_BYTES, j.header.size)
        if not w.head or j.complete is not None or j.held < n or j.header.mode == "used":
            continue
        try:
            fd = os.open(j.header.name + ".raw", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cap.fd)
        except OSError:
            continue
        try:
            data = os.pread(fd, n, 0)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != w.head:
            return False
        agree = True
    return agree


def find_unfinished(root: str, wanted: tuple[P.DiskIdentity, ...]) -> list[P.Unfinished]:
    """The captures in root that can be continued and whose every journaled disk is one of `wanted`.

    Read-only: nothing is locked or changed, so a lookup never disturbs a capture in progress.
    A capture whose journals cannot be read is left out (resuming it would be refused anyway).
    """
    store = Store(os.path.realpath(root))
    out = []
    try:
        for name in _partials(store):
            try:
                st, lfd = partial_state(store.fd, store.root, name)
            except OSError:
                continue
            if lfd is not None:
                os.close(lfd)
            if st.state == "unknown":
                continue
            cap = _open(store, name)
            try:
                journals = J.load_all(cap)
                updated = max((os.stat(j.name, dir_fd=cap.fd).st_mtime for j in journals.values()), default=0.0)
                how, pairs = _match(journals, wanted) if journals else (None, [])
                heads = _heads_agree(cap, pairs) if how is not None else None
            except (ServerError, OSError):
                continue
            finally:
                cap.close()
            # Listed when the disks match and what is held of them starts with the agent's bytes;
            # where nothing could be checked, only a match by WWID/serial (no name-and-size guess).
            if how is None or heads is False or (heads is None and how == P.DiskIdentity.WEAK):
                continue
            out.append(P.Unfinished(
                capture_id=cap.capture_id, updated=round(updated, 3), matched_by=how, live=st.state == "live",
                disks=tuple(P.UnfinishedDisk(_identity(j.header), j.held, j.complete is not None)
                            for j in journals.values())))
    finally:
        store.close()
    return sorted(out, key=lambda u: u.updated, reverse=True)


def gc(root: str, clean: bool = True) -> list[PartialState]:
    """Every `.partial` in root, with its state; a dead one is ended as its receiver would have.

    A live capture (its receiver still holds the lock) is never touched.
    """
    store = Store(os.path.realpath(root))
    try:
        return [_gc_one(store, name, clean) for name in _partials(store)]
    finally:
        store.close()


def _gc_one(store: Store, name: str, clean: bool) -> PartialState:
    st, lfd = partial_state(store.fd, store.root, name)
    try:
        if st.state != "dead" or not clean:
            return st
        cap = _open(store, name)
        try:
            try:
                held = {n: j.held for n, j in J.load_all(cap).items()}
            except ServerError:
                held = {}    # a damaged journal vouches for nothing: the capture cannot be resumed
            record = {"status": "failed", "code": "receiver_died", "capture_id": cap.capture_id,
                      "error": f"the receiver (pid {st.pid}) died without finishing; found by "
                               f"coldclone-receive --gc"}
            if any(held.values()):
                # What a cut session leaves (receiver.CaptureSink.fail): the held bytes stay for
                # `coldclone capture --resume ID`, and the operator decides when to drop them.
                record.update(resumable=True, held=held)
                detail = (f"{st.detail}; resumable: {sum(held.values())} bytes held "
                          f"({', '.join(f'{n} {b}' for n, b in held.items())}); failure.json written, "
                          f"resume with coldclone capture --resume {cap.capture_id} or remove the directory")
            else:
                removed = []
                for f in sorted(os.listdir(cap.fd)):
                    if f not in (LOCK, FAILURE):
                        os.unlink(f, dir_fd=cap.fd)
                        removed.append(f)
                record.update(resumable=False, removed=removed)
                detail = f"{st.detail}; cleaned: {', '.join(removed) or 'nothing'} removed, failure.json written"
            cap.write_atomic(FAILURE, P.dumps(record, indent=2).encode() + b"\n")
            os.unlink(LOCK, dir_fd=cap.fd)
        finally:
            cap.close()
        return PartialState(st.path, "dead", st.pid, detail)
    finally:
        if lfd is not None:
            os.close(lfd)
