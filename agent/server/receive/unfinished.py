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

import dataclasses
import fcntl
import os
import stat
from dataclasses import dataclass

from ... import protocol as P
from ...errors import ColdcloneError, ServerError
from ...manifest import MANIFEST, Manifest
from . import identity
from . import journal as J
from . import warm as W
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
            # never through a link, never a directory: a receiver only ever made a plain file here
            lfd = os.open(LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            if os.path.lexists(os.path.join(path, FAILURE)):
                return PartialState(path, "failed", None, "failed; failure.json tells why"), None
            return PartialState(path, "unknown", None, "no lock and no failure.json (an older receiver?)"), None
        except OSError as e:
            return PartialState(path, "unknown", None, (
                f"its lock {LOCK} is not a file a receiver made ({e.strerror}: a symlink or a directory "
                f"put there by someone else); not followed, left as it is: look at it, then remove the "
                f"directory by hand")), None
        if not stat.S_ISREG(os.fstat(lfd).st_mode):
            os.close(lfd)
            return PartialState(path, "unknown", None, (
                f"its lock {LOCK} is not a regular file; left as it is: look at it, then remove the "
                f"directory by hand")), None
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


def _match(headers: list[P.DiskHeader], wanted: tuple[P.DiskIdentity, ...]) -> str | None:
    """The weakest disk match when every held disk is proven to be one of `wanted`, each a
    different one (receive/identity.py: the identity, the recorded head, real evidence; the
    kernel's name for a disk may have changed), else None."""
    pairing = identity.pair([identity.recorded(h) for h in headers], wanted)
    if pairing.wrong or len(pairing.names) < len(headers):
        return None
    hows = pairing.how.values()
    return P.DiskIdentity.WEAK if P.DiskIdentity.WEAK in hows else next(iter(hows), None)


def _listed(h: P.DiskHeader) -> P.DiskIdentity:
    """A held disk as a lookup names it: without its head (the agent has its own)."""
    return dataclasses.replace(identity.recorded(h), head="")


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
                warm = W.load_warm(cap)
                held = [j.header for j in journals.values()]
                disks = [P.UnfinishedDisk(_listed(j.header), j.held, j.complete is not None)
                         for j in journals.values()]
                if warm is not None:
                    updated = max(updated, os.stat(W.WARM, dir_fd=cap.fd).st_mtime)
                    for d in warm.disks:
                        if d.name not in journals:
                            held.append(W.DeltaHeld.of(d).header())
                            disks.append(P.UnfinishedDisk(_listed(held[-1]), d.size, True))
                how = _match(held, wanted) if held else None
            except (ServerError, OSError):
                continue
            finally:
                cap.close()
            if how is None:
                continue
            out.append(P.Unfinished(
                capture_id=cap.capture_id, updated=round(updated, 3), matched_by=how, live=st.state == "live",
                disks=tuple(disks), warm=_warm_facts(warm) if warm is not None else None))
        out += _warm_captures(store, wanted)
    finally:
        store.close()
    return sorted(out, key=lambda u: u.updated, reverse=True)


def _warm_facts(m: Manifest) -> P.WarmFacts:
    syncs = m.syncs if isinstance(m.syncs, list) else []
    last = syncs[-1] if syncs else None
    return P.WarmFacts(syncs=len(syncs), last_sync=last.epoch if last else 0.0,
                       changed_bytes=last.bytes_changed if last else 0,
                       interval=round(last.epoch - syncs[-2].epoch, 3) if len(syncs) > 1 else 0.0)


def _warm_captures(store: Store, wanted: tuple[P.DiskIdentity, ...]) -> list[P.Unfinished]:
    """The complete warm captures (docs/two-phase.md) of these disks: a cutover continues them."""
    out = []
    for name in sorted(os.listdir(store.fd)):
        if name.endswith(PARTIAL) or os.path.islink(os.path.join(store.root, name)):
            continue
        path = os.path.join(store.root, name, MANIFEST)
        m = W.warm_manifest(path) if os.path.isfile(path) else None
        if m is None:
            continue
        held = [W.DeltaHeld.of(d).header() for d in m.disks]
        how = _match(held, wanted) if held else None
        if how is None:
            continue
        out.append(P.Unfinished(
            capture_id=name, updated=round(os.stat(path).st_mtime, 3), matched_by=how,
            disks=tuple(P.UnfinishedDisk(_listed(h), h.size, True) for h in held), warm=_warm_facts(m)))
    return out


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
            detail = _end_dead(store, cap, st)
        finally:
            cap.close()
        return PartialState(st.path, "dead", st.pid, detail)
    finally:
        if lfd is not None:
            os.close(lfd)


def _end_dead(store: Store, cap: CaptureDir, st: PartialState) -> str:
    """What its receiver would have done had it lived: finish a capture whose FINISH had written
    the manifest, keep one whose journals hold data resumable, clean one that holds nothing.
    Never deletes what a journal vouches for as verified, never follows a link, never descends."""
    names = sorted(os.listdir(cap.fd))
    if MANIFEST in names and not os.path.lexists(cap.final_path):
        # FINISH had verified every disk and written manifest.json: only the rename was left.
        try:
            manifest = Manifest.load(P.loads_object(_read(cap, MANIFEST), MANIFEST), MANIFEST)
            missing = [d.image for d in manifest.disks if not _is_file(cap, d.image)]
        except (ColdcloneError, P.ProtocolError, OSError):
            manifest, missing = None, ["(manifest.json unreadable)"]
        if manifest is not None and manifest.status == "complete" and not missing:
            os.unlink(LOCK, dir_fd=cap.fd)
            path = cap.complete()
            gone = J.remove_all(cap)
            return (f"{st.detail} after it had verified every disk and written manifest.json; finished: "
                    f"renamed to {path}" + (f" (resume journals removed: {', '.join(gone)})" if gone else ""))
    try:
        held, damaged = {n: j.held for n, j in J.load_all(cap).items()}, None
    except ServerError as e:
        held, damaged = {}, str(e)
    if W.WARM in names:
        # a warm capture a delta session was updating (receive/warm.py): the operator's head
        # start, kept whole; its next sync or the cutover continues it
        record = {"status": "failed", "code": "receiver_died", "capture_id": cap.capture_id, "resumable": True,
                  "held": held, "error": f"the receiver (pid {st.pid}) died while updating this warm capture; "
                                         f"found by coldclone-receive --gc"}
        cap.write_atomic(FAILURE, P.dumps(record, indent=2).encode() + b"\n")
        os.unlink(LOCK, dir_fd=cap.fd)
        return (f"{st.detail}; a warm capture being updated: kept (run coldclone sync again, or the cutover); "
                f"failure.json written")
    record = {"status": "failed", "code": "receiver_died", "capture_id": cap.capture_id,
              "error": f"the receiver (pid {st.pid}) died without finishing; found by coldclone-receive --gc"}
    if any(held.values()) or damaged:
        # What a cut session leaves (receiver.CaptureSink.fail): the held bytes stay for
        # `coldclone capture --resume ID`, and the operator decides when to drop them. A journal
        # that cannot be read vouches for nothing, but it may sit beside verified images: nothing
        # is deleted on a guess.
        record.update(resumable=bool(held) and not damaged, held=held)
        if damaged:
            record["journal_error"] = damaged
            detail = (f"{st.detail}; a resume journal cannot be read ({damaged}); nothing removed, "
                      f"failure.json written: look at it, then remove the directory by hand")
        else:
            detail = (f"{st.detail}; resumable: {sum(held.values())} bytes held "
                      f"({', '.join(f'{n} {b}' for n, b in held.items())}); failure.json written, "
                      f"resume with coldclone capture --resume {cap.capture_id} or remove the directory")
    else:
        removed, left = [], []
        for f in names:
            if f in (LOCK, FAILURE):
                continue
            if stat.S_ISDIR(os.stat(f, dir_fd=cap.fd, follow_symlinks=False).st_mode):
                left.append(f + "/")     # no receiver makes directories: not ours to remove
                continue
            os.unlink(f, dir_fd=cap.fd)  # a symlink goes itself, never what it points to
            removed.append(f)
        record.update(resumable=False, removed=removed)
        detail = f"{st.detail}; cleaned: {', '.join(removed) or 'nothing'} removed, failure.json written"
        if left:
            record["left"] = left
            detail += f"; left {', '.join(left)} (not made by a receiver: remove it by hand)"
    cap.write_atomic(FAILURE, P.dumps(record, indent=2).encode() + b"\n")
    os.unlink(LOCK, dir_fd=cap.fd)
    return detail


def _is_file(cap: CaptureDir, name: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=cap.fd, follow_symlinks=False).st_mode)
    except (OSError, ValueError):
        return False


def _read(cap: CaptureDir, name: str, limit: int = 64 << 20) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cap.fd)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)
