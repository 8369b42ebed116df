"""Every capture under a receiver root and its state, read from what the receiver, the converter
and the publisher leave there: the manifests, the resume journals, the failure files, and the
locks held by the processes at work. No second source of truth: nothing here is written.

States, in the order a capture goes through them:

    streaming    a receiver holds it (rate, ETA and stalls from the journal's timed checkpoints,
                 or for a disk sent as a delta from its `<disk>.delta` lines: receive/warm.py)
    resumable    the session ended and the journals vouch for what is held (`held`)
    verified     complete: every disk verified, manifest.json written
    queued       its conversion waits for a slot of the root (receive/convqueue.py)
    converting   its conversion holds a slot
    converted    the manifest's `conversion` says converted
    published    the manifest's `publish` names the Glance image
    failed       failure.json (or a conversion that failed) says why

Beside the state, a two-phase capture's `phase` (docs/two-phase.md): `warm` (its syncs, the
last one's time: a head start, a test launch at most, so a wave does not count it done) or
`cutover` (the exact images of the cold phase).

`coldclone-server status --json` prints each CaptureStatus as agent.records writes it (`dumps`),
the web page and its API (/api/status) the same; `totals` sums a wave for the page and the text output.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Annotated

import msgspec

from ... import protocol as P
from ... import records
from ...errors import ColdcloneError, ServerError
from ...manifest import MANIFEST, Phase, PublishRecord
from ...units import human_bytes, human_minutes
from ..convert.model import Outcome, Verdict
from ..receive import captures, convqueue
from ..receive import journal as J
from ..receive import warm as W
from ..receive.manifest import CaptureDirectory
from ..receive.store import FAILURE, LOCK, CaptureDir, Store

# The rate of a running capture: over its checkpoints of the last this many seconds.
RATE_WINDOW = 30.0
# A running capture whose journal has not moved for this long is stalled (checkpoints come every
# 2 s while data arrives: receive/journal.py).
STALL_SECONDS = 30.0


class State(str, enum.Enum):
    STREAMING = "streaming"
    RESUMABLE = "resumable"
    VERIFIED = "verified"
    QUEUED = "queued"
    CONVERTING = "converting"
    CONVERTED = "converted"
    PUBLISHED = "published"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        """The capture arrived verified: what a wave counts as a server done."""
        return self in (State.VERIFIED, State.QUEUED, State.CONVERTING, State.CONVERTED, State.PUBLISHED)


# A peer's status may not hold negative counts (records.decode checks it).
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


@dataclass(frozen=True)
class CaptureStatus:
    capture_id: str
    state: State
    wave: str | None
    server: str | None              # the source server (its host name, as its agent saw it)
    conversion_server: str          # the conversion server holding it
    path: str
    size: NonNegative | None = None         # bytes of its disks (None: not known yet)
    done: NonNegative = 0                   # bytes of the disks covered: received, or held
    rate: NonNegativeFloat | None = None    # bytes of disk per second, while streaming
    eta_seconds: NonNegativeFloat | None = None
    stalled: bool = False
    image_ids: tuple[str, ...] = ()
    reason: str | None = None       # failed: why
    detail: str = ""                # one line for people
    updated: NonNegativeFloat = 0.0         # when it last changed (epoch seconds)
    superseded_by: str | None = None   # the same capture further on another conversion server
    phase: str | None = None        # warm / cutover (manifest phase); None: a cold capture
    syncs: NonNegative = 0          # warm syncs stored
    last_sync: NonNegativeFloat | None = None   # when the last one was stored (epoch seconds)

    @classmethod
    def load(cls, obj: object, what: str = "status") -> "CaptureStatus":
        """A peer's answer (one item of its /api/status), typed; a RecordError names what is wrong."""
        return records.decode(obj, cls, what)

    @property
    def migrated(self) -> bool:
        """Arrived verified as the migration: a warm capture is only a head start."""
        return self.state.done and self.phase != Phase.WARM

    def phase_text(self, now: float) -> str:
        """`warm: 3 syncs, the last 2 h ago` / `cutover` / "" (a cold capture)."""
        if self.phase != Phase.WARM:
            return self.phase or ""
        age = f", the last {human_minutes(max(0.0, now - self.last_sync))} ago" if self.last_sync else ""
        return f"warm: {self.syncs} sync{'s' if self.syncs != 1 else ''}{age}"

    @property
    def fraction(self) -> float | None:
        if self.state.done:
            return 1.0
        return min(1.0, self.done / self.size) if self.size else None


# ----------------------------------------------------------------- reading a root

def scan(root: str, name: str | None = None, now: float | None = None,
         stall: float = STALL_SECONDS) -> list[CaptureStatus]:
    """The status of every capture under root; `name` is this conversion server's (host name);
    a running capture whose journal has not moved for `stall` seconds is stalled."""
    name = name or socket.gethostname()
    now = time.time() if now is None else now
    queue = convqueue.snapshot(root)
    out = []
    for found in captures.find(root):
        try:
            st = _partial(found, name, now, stall) if found.partial else _complete(found, name, queue)
        except (ColdcloneError, P.ProtocolError, OSError) as e:   # records.RecordError is a ColdcloneError
            st = CaptureStatus(found.capture_id, State.FAILED, None, None, name, found.path,
                               reason=f"cannot be read: {e}", detail=f"cannot be read: {e}")
        out.append(st)
    return out


def _open(found: captures.Found) -> tuple[Store, CaptureDir]:
    store = Store(found.directory)
    try:
        dfd = os.open(found.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store.fd)
    except OSError:
        store.close()
        raise
    return store, CaptureDir(store, found.capture_id, found.name, dfd)


def _json_file(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > P.MAX_JSON:
                return None
            return P.loads_object(f.read(), path)
    except FileNotFoundError:
        return None


@dataclass
class _Said:
    """What a failure record or a journal's capture facts say of a capture (the rest is not read)."""

    wave: str | None = None
    hostname: str | None = None
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None
    resumable: bool | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Way:
    """How far one disk of a running capture has come: from its resume journal (a disk sent
    whole) or from its `<disk>.delta` (a disk sent as a delta: receive/warm.py)."""

    name: str
    size: int
    at: int                                # every byte below it has arrived
    complete: bool
    points: list[tuple[int, float]]        # (at, when): the journal's timed checkpoints, the delta's lines
    created: float                         # when the disk started from byte 0 (0: not known)

    @classmethod
    def of_journal(cls, j: J.DiskJournal) -> "_Way":
        return cls(j.header.name, j.header.size, j.header.size if j.complete is not None else j.held,
                   j.complete is not None, [(cp.end, cp.t) for cp in j.checkpoints if cp.t], j.created)

    @classmethod
    def of_delta(cls, p: W.DeltaProgress) -> "_Way":
        return cls(p.disk, p.size, p.at, p.verified, list(p.points), p.created)


def _partial(found: captures.Found, name: str, now: float, stall: float) -> CaptureStatus:
    lock_state = captures.state_of(found)
    store, cap = _open(found)
    try:
        journals = J.load_all(cap)
        deltas = W.progress_of(cap)
    except ServerError as e:
        journals, deltas, damaged = {}, {}, str(e)
    else:
        damaged = None
    finally:
        cap.close()
        store.close()
    failure = _json_file(os.path.join(found.path, FAILURE)) or {}
    ff = records.decode(failure, _Said, FAILURE)
    facts = (next((j.capture for j in journals.values() if j.capture), None)
             or next((p.capture for p in deltas.values() if p.capture), None) or {})
    cf = records.decode(facts, _Said, "journal capture facts")
    wave = cf.wave or ff.wave
    host = cf.hostname or ff.hostname
    ways = {n: _Way.of_journal(j) for n, j in journals.items()}
    if lock_state == "live":
        # a delta disk's way counts while its session runs; once it ended, what the capture holds
        # is the warm copy, whatever the cut delta had rewritten of it
        ways.update((n, _Way.of_delta(p)) for n, p in deltas.items() if n not in ways)
    names = [n for n in (facts.get("disks") or []) if isinstance(n, str)] or list(ways)
    sizes = {n: w.size for n, w in ways.items()}
    size = (cf.size or ff.size
            or (sum(sizes.values()) if names and all(n in sizes for n in names) else None))
    held = sum(w.at for w in ways.values())
    stamps = [t for w in ways.values() for _, t in w.points]
    files = {n: os.stat(os.path.join(found.path, n)).st_mtime for n in (LOCK, FAILURE)
             if os.path.exists(os.path.join(found.path, n))}
    mtime = max(list(files.values()) + stamps + [0.0])
    base = CaptureStatus(found.capture_id, State.STREAMING, wave, host, name, found.path, size=size, done=held,
                         updated=mtime)
    if damaged:
        return replace(base, state=State.FAILED, reason=damaged, detail=damaged)
    if lock_state == "live":
        # the receiver writes its pid into the lock when its session starts (store.CaptureDir)
        return _streaming(base, ways, names, now, stall, files.get(LOCK, 0.0))
    if lock_state == "failed" and not ff.resumable:
        reason = ff.error or "failed (failure.json gives no reason)"
        return replace(base, state=State.FAILED, reason=reason, detail=reason)
    if lock_state in ("dead", "failed") and held:
        why = ff.error or "its receiver died"
        return replace(base, state=State.RESUMABLE,
                       detail=f"{human_bytes(held)} held ({_held_text(journals)}); stopped: {why}")
    reason = ("its receiver died before anything was held" if lock_state == "dead" else
              ff.error or "no lock and no failure record (an older receiver?)")
    return replace(base, state=State.FAILED, reason=reason, detail=reason)


def _held_text(journals: dict[str, J.DiskJournal]) -> str:
    return ", ".join(f"{n} {'complete' if j.complete is not None else human_bytes(j.held)}"
                     for n, j in journals.items())


def _streaming(base: CaptureStatus, ways: dict[str, _Way], names: list[str],
               now: float, stall: float, session_start: float) -> CaptureStatus:
    """A capture a receiver holds: how far, how fast, and whether it still moves."""
    current = next((ways[n] for n in reversed(names) if n in ways), None)
    points = current.points if current else []
    rate = _rate(current, points, now, session_start) if current is not None else None
    last = points[-1][1] if points else None
    at_end = current is not None and current.at >= current.size
    stalled = last is not None and not at_end and now - last > stall
    left = (base.size - base.done) if base.size is not None else None
    eta = left / rate if rate and left is not None and not stalled else None
    if current is None:
        detail = "starting"
    elif at_end and not current.complete:
        detail = f"disk {current.name}: all data in, verifying"
    else:
        detail = f"disk {current.name} at {human_bytes(current.at)} of {human_bytes(current.size)}"
    if stalled:
        detail += f"; STALLED: nothing new for {human_minutes(now - last)}"
    return replace(base, rate=rate if not stalled else 0.0, eta_seconds=eta, stalled=stalled, detail=detail,
                   updated=max(base.updated, last or 0.0))


def _rate(w: _Way, points: list[tuple[int, float]], now: float, session_start: float) -> float | None:
    """Bytes of the disk per second: over its points of the last RATE_WINDOW seconds, else
    since this session started on it (from the held end, or from byte 0 when the disk started
    in this session), never across the gap of an earlier session's end."""
    recent = [(at, t) for at, t in points if t >= now - RATE_WINDOW]
    if len(recent) >= 2 and recent[-1][1] > recent[0][1]:
        return (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
    here = [(at, t) for at, t in points if t >= session_start]
    if not here:
        return None
    before = [(at, t) for at, t in points if t < session_start]
    start_at = before[-1][0] if before else 0
    start_t = max(session_start, w.created) if not before else session_start
    if not start_t or here[-1][1] <= start_t:
        return None
    return (here[-1][0] - start_at) / (here[-1][1] - start_t)


# A page that refreshes every few seconds over hundreds of complete captures reads each manifest
# once: what it says is kept while the file stays the same (path, mtime, size).
_MANIFESTS: dict[str, tuple[tuple, CaptureStatus, bool]] = {}
_MANIFESTS_MAX = 4096


def _complete(found: captures.Found, name: str, queue: convqueue.Snapshot) -> CaptureStatus:
    st = os.stat(os.path.join(found.path, MANIFEST))
    key = (st.st_mtime_ns, st.st_size, st.st_ino, name)      # rewritten atomically: a new inode
    hit = _MANIFESTS.get(found.path)
    if hit is not None and hit[0] == key:
        base, concluded = hit[1], hit[2]
    else:
        base, concluded = _from_manifest(found, name)
        if len(_MANIFESTS) >= _MANIFESTS_MAX:
            _MANIFESTS.clear()
        _MANIFESTS[found.path] = (key, base, concluded)
    if concluded:
        return base
    where = queue.of(found.path)
    if where is not None:
        what, n = where
        if what == "converting":
            return replace(base, state=State.CONVERTING,
                           detail=f"converting (slot {n + 1} of {queue.limit or '?'})")
        return replace(base, state=State.QUEUED,
                       detail=f"conversion queued: {n} in line, {len(queue.running)} of "
                              f"{queue.limit or '?'} converting")
    return base


def _from_manifest(found: captures.Found, name: str) -> tuple[CaptureStatus, bool]:
    """What the manifest alone says of a complete capture, and whether it says the last word
    (published, or a conversion's verdict): else the conversion queue may have more to say."""
    capdir = CaptureDirectory.load(found.path, purpose="listed")
    m = capdir.manifest
    size = sum(d.size for d in m.disks)
    host = m.source.get("hostname")
    updated = os.stat(os.path.join(found.path, MANIFEST)).st_mtime
    syncs = m.sync_list
    phase = m.phase if m.phase in (Phase.WARM, Phase.CUTOVER) else None
    warm = ("a warm copy (crash-inconsistent, a head start): cut over from the ISO for the migration; "
            if phase == Phase.WARM else "")
    base = CaptureStatus(m.capture_id, State.VERIFIED, m.wave or None, host if isinstance(host, str) else None, name,
                         found.path, size=size, done=size, updated=updated,
                         detail=f"{warm}{len(m.disks)} disk(s) verified, {human_bytes(size)}",
                         phase=phase, syncs=len(syncs), last_sync=(syncs[-1].epoch or None) if syncs else None)
    published = PublishRecord.from_document(capdir.document)
    if published is not None and published.images:
        ids = tuple(i.image_id for i in sorted(published.images, key=lambda i: i.position))
        what = f"test image{'s' if len(ids) > 1 else ''} of sync {published.sync}" if published.test else \
            f"image{'s' if len(ids) > 1 else ''}"
        stale = (f" ({len(syncs)} syncs stored since: publish again for the newest)"
                 if published.test and phase == Phase.WARM and published.sync != len(syncs) else "")
        return replace(base, state=State.PUBLISHED, image_ids=ids,
                       detail=f"{warm}published to {published.cloud} as {what} {', '.join(ids)}{stale}"), True
    v = capdir.section("conversion", Verdict)
    if v is not None:
        if v.result is Outcome.CONVERTED:
            return replace(base, state=State.CONVERTED, detail=v.message), True
        if v.result is Outcome.FAILED:
            return replace(base, state=State.FAILED, reason=v.message, detail=v.message), True
        return replace(base, detail=v.message), True    # not converted: it stays a verified capture
    return base, False


# ----------------------------------------------------------------- several servers, waves

# Most advanced first: a capture held on two servers (it failed over) counts once, where it got further.
_RANK = {State.PUBLISHED: 0, State.CONVERTED: 1, State.CONVERTING: 2, State.QUEUED: 3, State.VERIFIED: 4,
         State.STREAMING: 5, State.RESUMABLE: 6, State.FAILED: 7}


def merge(statuses: list[CaptureStatus]) -> list[CaptureStatus]:
    """Several servers' captures: one that moved to another server (failover) is the same capture,
    counted once where it got furthest (the newest copy among equals); its other copies say
    which server has it (superseded_by)."""
    best: dict[str, CaptureStatus] = {}
    for s in statuses:
        b = best.get(s.capture_id)
        if b is None or (_RANK[s.state], -s.updated) < (_RANK[b.state], -b.updated):
            best[s.capture_id] = s
    return [s if s is best[s.capture_id] else replace(s, superseded_by=best[s.capture_id].conversion_server)
            for s in statuses]


@dataclass
class WaveTotals:
    wave: str | None
    captures: int = 0               # source servers in the wave (superseded copies not counted)
    done: int = 0                   # of them verified or further
    failed: int = 0
    streaming: int = 0
    stalled: int = 0
    resumable: int = 0
    moved: int = 0                  # bytes of their disks covered
    size: int = 0                   # bytes of their disks, as far as known
    unknown_size: int = 0           # captures whose size is not known yet
    rate: float = 0.0               # bytes/s of all streaming captures together
    projected_end: float | None = None   # epoch seconds: when the last running capture should end
    finished: float | None = None   # epoch seconds: when the last one ended, once all are done
    conversion_servers: set = field(default_factory=set)

    def line(self, now: float) -> str:
        return f"servers done {self.done} of {self.captures}, failed {self.failed}; {self.progress_text(now)}"

    def progress_text(self, now: float) -> str:
        """Bytes moved, the rate, and the end: projected, or when it was."""
        size = human_bytes(self.size) + (f" + {self.unknown_size} not yet known" if self.unknown_size else "")
        if self.finished is not None:
            end = f"finished {time.strftime('%H:%M', time.localtime(self.finished))}"
        elif self.projected_end is not None:
            end = (f"projected end {time.strftime('%H:%M', time.localtime(self.projected_end))} "
                   f"(in {human_minutes(max(0.0, self.projected_end - now))})")
        elif not self.streaming:
            end = "nothing running" + (f", {self.resumable} waiting to resume" if self.resumable else "")
        else:
            end = "projected end unknown" + (f" ({self.stalled} stalled)" if self.stalled else
                                             f" ({self.resumable} waiting to resume)" if self.resumable else "")
        return f"moved {human_bytes(self.moved)} of {size}; {self.rate / 1e6:.1f} MB/s; {end}"


def totals(statuses: list[CaptureStatus], now: float | None = None) -> list[WaveTotals]:
    """One WaveTotals per wave (no wave last), over the captures that are not superseded."""
    now = time.time() if now is None else now
    waves: dict[str | None, WaveTotals] = {}
    ends: dict[str | None, list[float | None]] = {}
    for s in statuses:
        if s.superseded_by is not None:
            continue
        t = waves.setdefault(s.wave, WaveTotals(s.wave))
        t.captures += 1
        t.conversion_servers.add(s.conversion_server)
        t.done += s.migrated
        t.failed += s.state is State.FAILED
        t.resumable += s.state is State.RESUMABLE
        t.moved += s.done
        if s.size is None:
            t.unknown_size += 1
        else:
            t.size += s.size
        if s.state is State.STREAMING:
            t.streaming += 1
            t.stalled += s.stalled
            t.rate += s.rate or 0.0
            ends.setdefault(s.wave, []).append(now + s.eta_seconds if s.eta_seconds is not None else None)
    for w, t in waves.items():
        running = ends.get(w, [])
        if running and all(e is not None for e in running) and not t.resumable:
            t.projected_end = max(running)
        if t.done == t.captures:
            t.finished = max(s.updated for s in statuses if s.wave == w and s.superseded_by is None)
    return sorted(waves.values(), key=lambda t: (t.wave is None, t.wave or ""))


def ordered(statuses: list[CaptureStatus]) -> list[CaptureStatus]:
    """Failures first, then what runs, then the rest; by wave and source within."""
    first = {State.FAILED: 0, State.STREAMING: 1, State.RESUMABLE: 1}
    return sorted(statuses, key=lambda s: (s.superseded_by is not None, first.get(s.state, 2) if not s.stalled else 0,
                                           s.wave or "", s.server or "", s.capture_id))


def text_lines(statuses: list[CaptureStatus], now: float | None = None) -> list[str]:
    """`coldclone-server status` without --json: one line per capture, then the waves' totals."""
    now = time.time() if now is None else now
    out = []
    for s in ordered(statuses):
        pct = f"{100 * s.fraction:5.1f}%" if s.fraction is not None else "    ?%"
        rate = f" {s.rate / 1e6:.1f} MB/s" if s.rate else ""
        eta = f" ETA {human_minutes(s.eta_seconds)}" if s.eta_seconds is not None else ""
        sup = f" (taken over by {s.superseded_by})" if s.superseded_by else ""
        phase = f" [{s.phase_text(now)}]" if s.phase else ""
        out.append(f"{s.state.value:10} {pct} {s.wave or '-':12} {s.server or '?':20} {s.capture_id}"
                   f"{phase}{rate}{eta}: {s.detail}{sup}")
    for t in totals(statuses, now):
        out.append(f"wave {t.wave or '(none)'}: {t.line(now)}")
    return out


def dumps(statuses: list[CaptureStatus]) -> str:
    """`status --json` and /api/status: the list as agent.records writes models."""
    return records.dumps(statuses, indent=1, sort_keys=True)
