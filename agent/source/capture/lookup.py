"""Which unfinished captures of these source disks the conversion server holds.

A capture cut by a reboot of the source server (the operator boots the ISO again, or the headless
unit starts over) has lost its made-up capture id with the RAM it lived in. The disks have not
changed their WWID or serial, and the receiver's resume journals record both: a lookup session
(HELLO probe + unfinished_of, answered by READY.unfinished, then ABORT) finds the capture again.
The headless and CLI runs take a capture proven by WWID/serial on every disk on their own
(`resume=auto`); the TUI offers what it finds, weaker matches included, and the operator decides.
Either way the resumed capture checks every held byte against the source before anything is
sent (capture/resume.py), so even a wrong pick cannot splice two disks into one image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ... import __version__
from ... import protocol as P
from ..transport.base import Connection
from ...units import human_bytes, human_minutes
from .session import _Replies   # the capture's own reply handling
from .source import probe

LOOKUP_TIMEOUT = 60.0


def identities(paths: list[str]) -> tuple[P.DiskIdentity, ...]:
    """Each disk's identity with the digest of its first bytes (read-only, before any guard: a
    plain read of 64 KiB), which the receiver checks against what it holds of the disk."""
    return tuple(probe(path).read_head().identity() for path in paths)


@dataclass(frozen=True)
class Answer:
    """What one lookup session learnt of a server."""
    unfinished: list[P.Unfinished]
    load: P.ServerLoad | None       # None: a receiver that predates waves does not say


def find_unfinished(connect, paths: list[str]) -> list[P.Unfinished]:
    """The unfinished captures of these disks on the server, newest first (an empty list from a
    receiver that predates lookups: it ignores the question)."""
    return ask(connect, identities(paths)).unfinished


def ask(connect, wanted: tuple[P.DiskIdentity, ...]) -> Answer:
    """One lookup session: the server's unfinished captures of these disks and how busy it is."""
    conn: Connection = connect()
    replies = _Replies(conn)
    writer = P.StreamWriter(conn.send)
    try:
        writer.hello(P.Hello(capture_id=None, agent_version=__version__, format=P.ImageFormat.RAW, probe=True,
                             disks=tuple(d.name for d in wanted), unfinished_of=wanted))
        ready = replies.wait_for((P.Event.READY,), timeout=LOOKUP_TIMEOUT)
        found = P.decode_unfinished(ready.unfinished)
        load = P.ServerLoad.decode(ready.load)
        writer.abort("lookup done")
        conn.close_write()
        replies.drain(timeout=10)
    except (OSError, ValueError) as e:
        raise replies.after_send_failure(e) from None
    finally:
        conn.close()
    return Answer(found, load)


def to_take(found: list[P.Unfinished]) -> P.Unfinished | None:
    """What an unattended run resumes on its own: the newest capture proven by WWID or serial."""
    return next((u for u in found if u.proven), None)


def describe(u: P.Unfinished, now: float | None = None) -> str:
    """One line for the operator: which capture, how much of it the server holds, how old."""
    age = max(0.0, (now if now is not None else time.time()) - u.updated)
    disks = ", ".join(f"{d.identity.name} {'complete' if d.complete else human_bytes(d.held)}" for d in u.disks)
    how = "by WWID/serial" if u.proven else "by disk name and size only (these disks have no serial)"
    live = "; its last session is still open on the server" if u.live else ""
    return (f"{u.capture_id}: {human_bytes(u.held)} of {human_bytes(u.size)} held ({disks}), "
            f"last written {human_minutes(age)} ago, matched {how}{live}")

