"""Which conversion server takes this capture, when the agent was given several (a wave).

Before the capture the agent asks every server, in parallel, over the lookup session that
exists (capture/lookup.py: HELLO probe, READY, ABORT): what it holds of these disks and how
busy it is (READY.load: free space, captures running, conversions). The order it then tries
them in (`rank`):

 1. a server holding an unfinished capture of these very disks (proven by WWID/serial, or by
    their first bytes): resuming there sends only the rest;
 2. servers with room for the capture (its estimated data, as the receiver's own preflight
    counts it), fewest running captures first; among servers equally busy, a hash of the server
    and this source weighted by the server's free space (weighted rendezvous hashing): sources
    that start together see the same loads, and still spread over the servers, in proportion
    to their room (the roomiest alone would take them all);
 3. servers that say they have no room, then the ones that did not answer (down).

While it captures (`Placement.connect`, the capture's connect): a server that stops answering
is tried again until it has been unreachable for `failover` seconds, then the capture moves to
the next server in that order and starts there anew (what the first one holds stays there,
resumable when it comes back); a server that refuses for lack of space is left at once. Before
anything was sent, a server that cannot be reached is left at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ... import protocol as P
from ...errors import ColdcloneError, ConnectionError_, ServerError
from ...units import human_bytes
from ..transport.base import Connection
from ..transport.url import redact
from . import lookup

log = logging.getLogger("coldclone.placement")

SURVEY_TIMEOUT = 90.0


@dataclass
class Server:
    """One conversion server the agent may capture to."""
    url: str                                    # as the operator wrote it
    connect: Callable[[], Connection]
    answer: lookup.Answer | None = None         # what it said to the survey
    error: str | None = None                    # why it could not be asked

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def load(self) -> P.ServerLoad | None:
        return self.answer.load if self.answer else None

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.shown}: not reachable ({self.error})"
        ld = self.load
        if ld is None:
            return f"{self.shown}: answered (its receiver does not report its load)"
        conv = f", {ld.converting} converting, {ld.queued} queued" if ld.converting or ld.queued else ""
        return f"{self.shown}: {ld.running} capture(s) running{conv}, {human_bytes(ld.free_bytes)} free"


def survey(servers: list[Server], wanted: tuple[P.DiskIdentity, ...], timeout: float = SURVEY_TIMEOUT) -> None:
    """Ask every server at once (a lookup session each); fills each one's answer or error."""

    def ask(s: Server) -> None:
        try:
            s.answer = lookup.ask(s.connect, wanted)
        except (ColdcloneError, P.ProtocolError, OSError) as e:
            s.error = str(e)

    threads = [threading.Thread(target=ask, args=(s,), name="cc-survey", daemon=True) for s in servers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for s, t in zip(servers, threads):
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive() and s.answer is None and s.error is None:
            s.error = f"no answer within {timeout:.0f} s"


def _spread(url: str, source: str, weight: float) -> float:
    """Weighted rendezvous hashing: each source orders equally busy servers its own (stable) way,
    a server coming first for a share of the sources proportional to its weight (free space)."""
    h = int.from_bytes(hashlib.sha256(f"{url}\0{source}".encode()).digest()[:8], "big")
    u = (h + 0.5) / 2 ** 64                   # uniform in (0, 1)
    return max(weight, 1.0) / -math.log(u)


def resumable_on(s: Server) -> P.Unfinished | None:
    """The unfinished capture of these disks a server holds that an unattended run takes."""
    return lookup.to_take(s.answer.unfinished) if s.answer else None


def rank(servers: list[Server], source: str, need: int | None) -> list[Server]:
    """The order to try the servers in (module doc). need: bytes the capture takes on a server
    (protocol.space_needed of its estimated data), None when not known."""

    def key(s: Server) -> tuple:
        if s.error is not None:
            return (3,)
        ld = s.load
        if resumable_on(s) is not None:
            return (0, -resumable_on(s).updated)
        if ld is None:
            return (1, 0, -_spread(s.url, source, 1.0))
        full = need is not None and ld.free_bytes < need
        return (2 if full else 1, ld.running, -_spread(s.url, source, ld.free_bytes))

    return sorted(servers, key=key)


@dataclass
class Placement:
    """The capture's way to its server: connect() to the current one, moving on as the module
    doc says. `say` tells the operator (a note of the job)."""
    order: list[Server]
    failover: float
    say: Callable[[str], None] = lambda text: None
    clock: Callable[[], float] = time.monotonic
    index: int = 0
    connected_once: bool = False
    down_since: float | None = None
    moves: list[str] = field(default_factory=list)     # each move, as said

    @property
    def current(self) -> Server:
        return self.order[self.index]

    def connect(self) -> Connection:
        tried = 0
        while True:
            s = self.current
            try:
                conn = s.connect()
            except ConnectionError_ as e:
                now = self.clock()
                if self.down_since is None:
                    self.down_since = now
                down = now - self.down_since
                tried += 1
                # Nothing sent yet: another server costs nothing. Later only after `failover`.
                if len(self.order) > 1 and tried < len(self.order) and (
                        not self.connected_once or down >= self.failover):
                    self._move(f"{s.shown} is not reachable"
                               + (f" for {down:.0f} s" if self.connected_once else "") + f" ({e})")
                    continue
                raise
            self.connected_once = True
            self.down_since = None
            return conn

    def moves_on(self, err: BaseException) -> bool:
        """A refusal of the current server that another one may not make (its disk is full):
        True when the next attempt goes to another server."""
        if len(self.order) < 2 or not (isinstance(err, ServerError) and err.code == "disk_full"):
            return False
        self._move(f"{self.current.shown} has no room for this capture ({err})")
        return True

    def _move(self, why: str) -> None:
        old = self.current
        self.index = (self.index + 1) % len(self.order)
        self.down_since = None
        text = (f"{why}: the capture moves to {self.current.shown}"
                + (" (starting there anew; what it had stays on " + old.shown + ", resumable)"
                   if self.connected_once else ""))
        log.warning("%s", text)
        self.moves.append(text)
        self.say(text)
