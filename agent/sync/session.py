"""One warm sync: find the warm capture of these disks, send what changed, get it stored.

The wire is the agent's (agent/wire.py; docs/two-phase.md "Warm syncs"):

1. Without --capture-id, a lookup session (HELLO probe + unfinished_of, as the ISO agent's
   capture/lookup.py asks): the receiver lists the captures it holds of these disks; a warm one
   (READY.unfinished with `warm`) proven by WWID/serial is taken, or, for disks that have
   neither, one matched by name and size (the receiver lists it only when the first 64 KiB it
   holds are these disks'). An unfinished capture of these disks (a sync cut before it was
   stored) is continued the same way. None: a new capture id.
2. The sync: HELLO {warm, delta, resume, identities}; the receiver sends each held disk's map
   (HELD_MAP lines, one digest per grid segment) before READY. Per disk a DISK header, then the
   whole disk in 4 MiB chunks: each chunk split into zero and data blocks (wire.split_extents),
   against the held map (wire.delta_extents) into SAME runs (the receiver holds them as they are)
   and what differs (DATA, zlib; ZERO); then END with the counts. A sync cut before it was
   stored is continued the same way: the receiver sends the map of the blocks it did store. A
   disk held without a map (a cut cold capture of the ISO) is sent again from byte 0.
3. DISK_OK for every disk, then FINISH; COMPLETE: the sync is stored.

A cut session is not aborted: the receiver keeps what it stored, and the same command run again
continues from there.

Standard library only, Python 3.6 syntax.
"""

import logging
import secrets
import socket
import sys
import time

from .. import __version__
from .. import wire
from ..bwlimit import TokenBucket, human_rate, paced
from ..errors import ServerError, UsageError
from .disk import Reader

log = logging.getLogger("coldclone.sync")

BLOCK_SIZE = wire.DEFAULT_BLOCK_SIZE
CHUNK_SIZE = wire.DEFAULT_CHUNK_SIZE
MODE = "nonzero"            # the whole disk is read; all-zero blocks go as ZERO records
CODEC = "zlib"
LOOKUP_TIMEOUT = 60
# READY of a resumed or delta capture comes after the receiver has re-read what it holds.
READY_TIMEOUT = 3600
# The receiver reads each disk back before DISK_OK; FINISH's COMPLETE only renames.
VERIFY_TIMEOUT = 6 * 3600
COMMIT_TIMEOUT = 600
# A session of the same capture still open on the server (a sync killed a moment ago): retry.
BUSY_RETRY_SECONDS = 90


def new_capture_id():
    """<hostname>-<UTC yyyymmddTHHMMSS>-<4 hex>, as the ISO agent's session.new_capture_id."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "server"
    return "%s-%s-%s" % (host, time.strftime("%Y%m%dT%H%M%S", time.gmtime()), secrets.token_hex(2))


def say(text):
    print("coldclone sync: " + text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- records


def hello(capture_id, disks, resume):
    """The sync's HELLO body (protocol.Hello's fields)."""
    return {"capture_id": capture_id, "agent_version": __version__, "format": "qcow2",
            "source": {"hostname": socket.gethostname(), "sync": {"tool": "coldclone sync",
                                                                   "python": sys.version.split()[0]}},
            "disks": [d.name for d in disks], "identities": [d.identity() for d in disks],
            "warm": True, "resume": bool(resume), "delta": True}


def lookup_hello(disks):
    return {"capture_id": None, "agent_version": __version__, "format": "raw", "probe": True,
            "disks": [d.name for d in disks], "unfinished_of": [d.identity() for d in disks]}


def disk_header(disk, restart_reason=None, delta=False, name=None):
    """The DISK body (protocol.DiskHeader's fields); name: the disk's name in the capture."""
    h = {"name": name or disk.name, "size": disk.size, "block_size": BLOCK_SIZE,
         "logical_sector_size": disk.logical_sector_size, "physical_sector_size": disk.physical_sector_size,
         "mode": MODE, "codec": CODEC, "source": disk.facts(), "resume_from": 0, "delta": bool(delta)}
    if restart_reason:
        h["restart_reason"] = restart_reason
    return h


class Stats(object):
    """A disk's counts, as END carries them (protocol.DiskEnd's fields)."""

    KEYS = ("bytes_read", "data_bytes", "zero_bytes", "payload_bytes", "wire_bytes", "data_records",
            "zero_records", "read_seconds", "elapsed", "same_bytes", "same_records", "segments_sent")

    def __init__(self, delta):
        self.delta = delta
        for k in self.KEYS:
            setattr(self, k, 0)
        self.read_seconds = self.elapsed = 0.0

    def as_dict(self):
        out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in
               ((k, getattr(self, k)) for k in self.KEYS)}
        if not self.delta:
            for k in ("same_bytes", "same_records", "segments_sent"):
                del out[k]
        return out


# ----------------------------------------------------------------- held maps


class HeldMaps(object):
    """HELD_MAP replies, gathered per disk in order until READY."""

    def __init__(self):
        self.grid = {}
        self.hex = {}

    def add(self, msg):
        name, grid, start, digests = msg.get("name"), msg.get("grid"), msg.get("start"), msg.get("digests")
        if not isinstance(name, str) or not isinstance(grid, int) or not isinstance(start, int) \
                or not isinstance(digests, str) or len(digests) % 64:
            raise ServerError("conversion server: a malformed held_map reply (%.200r)" % msg, code="protocol")
        parts = self.hex.setdefault(name, [])
        have = sum(len(p) for p in parts) // 64
        if self.grid.setdefault(name, grid) != grid or start != have:
            raise ServerError("conversion server: held_map of %s out of order (segment %d after %d, grid %d)"
                              % (name, start, have, grid), code="protocol")
        parts.append(digests)

    def of(self, name, held):
        """The wire.HeldMap of a held disk (None when the receiver sent none or a grid of 0)."""
        if not held.get("grid") or name not in self.hex:
            return None
        if self.grid[name] != held["grid"]:
            raise ServerError("conversion server: held_map of %s on a grid of %d, READY says %d"
                              % (name, self.grid[name], held["grid"]), code="protocol")
        try:
            return wire.HeldMap(held["size"], held["block_size"], held["grid"],
                                bytes.fromhex("".join(self.hex[name])))
        except (wire.ProtocolError, ValueError, KeyError, TypeError) as e:
            raise ServerError("conversion server: the held map of %s: %s" % (name, e), code="protocol") from None


# ------------------------------------------------------------------- one disk


class DiskSender(object):
    """Streams one disk: DISK, its records, END. `send` writes to the session (paced)."""

    def __init__(self, disk, send, held=None, held_map=None, name=None):
        self.disk = disk
        self.name = name or disk.name      # in the capture (wire.capture_names)
        self.send_raw = send
        self.held = held
        self.held_map = held_map

    def _send(self, data, st):
        st.wire_bytes += len(data)
        self.send_raw(data)

    def plan(self):
        """(restart_reason, delta) for this disk against what is held: a held map (a warm capture,
        or a sync cut before it was stored) makes the disk a delta."""
        d, held = self.disk, self.held
        if held is None:
            return None, False
        if (held.get("size"), held.get("block_size")) != (d.size, BLOCK_SIZE):
            return ("the held copy is %s bytes in blocks of %s; this disk is %d bytes in blocks of %d"
                    % (held.get("size"), held.get("block_size"), d.size, BLOCK_SIZE)), False
        if self.held_map is not None:
            return None, True
        if held.get("segments") or held.get("complete"):
            # A cut cold capture's journal (no block digests to compare with): the ISO agent's
            # resume re-reads and checks it (capture/resume.py); a sync sends the disk again.
            return "the server holds it without a map of block digests (a cut capture, not a sync)", False
        return None, False

    def run(self):
        d = self.disk
        t0 = time.monotonic()
        restart_reason, delta = self.plan()
        st = Stats(delta)
        if restart_reason:
            say("%s: sent whole again: %s" % (d.name, restart_reason))
        self._send(wire.encode_json(wire.T_DISK, disk_header(d, restart_reason, delta, self.name)), st)
        tree = wire.BlockTree(d.size, BLOCK_SIZE)
        grid = self.held_map.grid if delta else 0
        same_segments = 0
        reader = Reader(d)
        try:
            pos = 0
            while pos < d.size:
                n = min(CHUNK_SIZE, d.size - pos)
                t = time.monotonic()
                buf = reader.read(pos, n)
                st.read_seconds += time.monotonic() - t
                st.bytes_read += n
                items = wire.split_extents(buf, pos, BLOCK_SIZE)
                if delta:
                    items = wire.delta_extents(items, self.held_map, BLOCK_SIZE)
                for it in items:
                    if getattr(it, "same", False):
                        it.feed(tree)
                        self._send(it.encode(BLOCK_SIZE), st)
                        st.same_bytes += it.length
                        st.same_records += 1
                        same_segments += (it.end - 1) // grid - it.offset // grid + 1
                    elif it.zero:
                        tree.add_zero(it.offset, it.length)
                        self._send(wire.encode_zero(it.offset, it.length), st)
                        st.zero_bytes += it.length
                        st.zero_records += 1
                    else:
                        tree.add_digests(it.offset, it.length, it.digests)
                        codec, payload = wire.zlib_payload(it.data)
                        self._send(wire.encode_data(it.offset, it.length, codec, wire.record_digest(it.digests),
                                                    payload), st)
                        st.data_bytes += it.length
                        st.payload_bytes += len(payload)
                        st.data_records += 1
                pos += n
        finally:
            reader.close()
        if delta:
            st.segments_sent = -(-d.size // grid) - same_segments
        st.elapsed = time.monotonic() - t0
        digest = tree.digest()
        end = wire.encode_end(digest, st.as_dict())
        self._send(end, st)
        return digest, st


# -------------------------------------------------------------------- sessions


def _send_json(session, rtype, obj, first=False):
    session.send((wire.preamble() if first else b"") + wire.encode_json(rtype, obj))


def lookup(pinned, disks):
    """The captures the server holds of these disks: {capture_id: READY.unfinished entry}."""
    session = pinned.open()
    try:
        _send_json(session, wire.T_HELLO, lookup_hello(disks), first=True)
        while True:
            msg = session.next_reply(LOOKUP_TIMEOUT)
            if msg.get("event") == "ready":
                break
        found = msg.get("unfinished") or {}
        _send_json(session, wire.T_ABORT, {"reason": "lookup done"})
        session.close_write()
        session.drain(timeout=10)
    finally:
        session.close()
    return found if isinstance(found, dict) else {}


def pick(found, disks):
    """The capture a sync continues: (capture_id, how) or (None, why none)."""
    names = sorted(d.name for d in disks)
    proven = all(d.proven for d in disks)
    usable = []
    for cid, u in found.items():
        if not isinstance(u, dict) or not isinstance(u.get("disks"), list):
            continue
        # The receiver lists a capture only when each disk it holds proved to be another of these,
        # by identity, not by name (the kernel may name them otherwise today): the same sizes.
        held = sorted(x.get("size") for x in u["disks"] if isinstance(x, dict) and isinstance(x.get("size"), int))
        if held != sorted(d.size for d in disks):
            log.info("capture %s holds other disks than these: not continued", cid)
            continue
        weak = u.get("matched_by", "name and size") == "name and size"
        if weak and proven:
            continue     # these disks have a WWID/serial; a name-and-size match is someone else's
        usable.append((bool(u.get("warm")), float(u.get("updated") or 0), cid, u))
    if not usable:
        return None, ("the server holds no warm capture of %s (matched by %s)"
                      % (", ".join(names), "WWID/serial" if proven else
                         "name, size and first 64 KiB: these disks have no WWID or serial"))
    # a warm capture first, then the newest
    usable.sort(key=lambda x: (x[0], x[1]), reverse=True)
    warm, _, cid, u = usable[0]
    how = u.get("matched_by", "name and size")
    if warm:
        w = u["warm"] if isinstance(u["warm"], dict) else {}
        return cid, "warm capture %s (%s syncs, matched by %s)" % (cid, w.get("syncs", "?"), how)
    return cid, "capture %s, cut before it was stored (matched by %s): continuing it" % (cid, how)


class Result(object):
    def __init__(self, capture_id, complete, stats, wire_bytes, seconds):
        self.capture_id = capture_id
        self.complete = complete       # the COMPLETE reply
        self.stats = stats             # name -> Stats
        self.wire_bytes = wire_bytes
        self.seconds = seconds


def sync_once(pinned, disks, capture_id, resume, bucket=None):
    """One sync session, HELLO to COMPLETE."""
    t0 = time.monotonic()
    session = pinned.open()
    sent = [0, time.monotonic()]
    to_server = paced(session.send, bucket) if bucket is not None else session.send

    def send(data):
        to_server(data)
        sent[0] += len(data)
        sent[1] = time.monotonic()

    try:
        send(wire.preamble() + wire.encode_json(wire.T_HELLO, hello(capture_id, disks, resume)))
        maps = HeldMaps()
        while True:
            msg = session.next_reply(READY_TIMEOUT if resume else LOOKUP_TIMEOUT)
            if msg.get("event") == "held_map":
                maps.add(msg)
            elif msg.get("event") == "ready":
                break
        held = msg.get("held") or {}
        say("sync %s to %s (%s)" % (capture_id, session.description, msg.get("path") or "?"))
        held = dict((n, h) for n, h in held.items() if isinstance(h, dict))
        # the capture's name for each disk: the kernel may name a held disk otherwise today
        as_named = wire.capture_names([d.name for d in disks], dict((n, h.get("agent_name") or "")
                                                                    for n, h in held.items()))
        stats = {}
        for d in disks:
            name = as_named[d.name]
            if name != d.name:
                say("%s is disk %s of capture %s (its name there)" % (d.path, name, capture_id))
            h = held.get(name)
            hm = maps.of(name, h) if h is not None else None
            _, st = DiskSender(d, send, h, hm, name=name).run()
            stats[d.name] = st
            what = ("%d of %d segments changed, %d bytes sent" % (st.segments_sent, -(-d.size // hm.grid),
                                                                    st.wire_bytes)
                    if st.delta else "%d bytes of data, %d bytes sent" % (st.data_bytes, st.wire_bytes))
            say("%s: read %d bytes in %.1f s; %s" % (d.name, st.bytes_read, st.elapsed, what))
        verified = set()
        while not set(as_named.values()) <= verified:
            msg = session.next_reply(VERIFY_TIMEOUT)
            if msg.get("event") == "disk_ok":
                verified.add(msg.get("name"))
        session.send(wire.encode_finish())
        session.close_write()
        while True:
            msg = session.next_reply(COMMIT_TIMEOUT)
            if msg.get("event") == "complete":
                return Result(capture_id, msg, stats, sent[0], time.monotonic() - t0)
    finally:
        session.close()


def run_sync(pinned, disks, capture_id=None, bwlimit=None):
    """The whole sync: lookup (without an id), then the session (retried while the server still
    holds a session of this capture that was cut a moment ago)."""
    names = [d.name for d in disks]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UsageError("disk %s named twice" % ", ".join(dups))
    for d in disks:
        d.read_head()
    resume = True
    if capture_id is None:
        capture_id, how = pick(lookup(pinned, disks), disks)
        if capture_id is None:
            capture_id = new_capture_id()
            resume = False
            say("%s: a new capture %s, every block is sent" % (how, capture_id))
        else:
            say("continuing " + how)
    bucket = TokenBucket(bwlimit) if bwlimit else None
    if bucket is not None:
        say("bandwidth capped at %s" % human_rate(bwlimit))
    deadline = time.monotonic() + BUSY_RETRY_SECONDS
    while True:
        try:
            return sync_once(pinned, disks, capture_id, resume, bucket)
        except ServerError as e:
            if e.code not in ("busy", "session_ended") or time.monotonic() > deadline:
                raise
            say("the server still has a session of %s open (%s); trying again in 3 s" % (capture_id, e))
            time.sleep(3)
