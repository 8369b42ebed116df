"""Whose disk a journal holds: the proof an agent must give before a held disk is continued,
dropped (a restart from byte 0) or even named to it (a lookup).

An agent key is shared by every server booted from the same ISO, so "I resume capture X" or "I
am disk sda of 500 GB" proves nothing. What the journal recorded when the disk started (its DISK
header's `source`: WWID, serial, and `head`, the sha256 of its first 64 KiB as the agent read
them) is held against what the agent reports now (HELLO.identities, a DISK header, or a lookup's
HELLO.unfinished_of). Per disk:

- the identity matches (protocol.DiskIdentity.matched_by: the size, and the WWID, else the serial,
  else, neither side having either, the name);
- where a head was recorded, the agent's head is that one (an agent that sends none does not
  match: leaving it out must not be a way around the check);
- and something real proves it: a WWID or serial match, or a recorded head that is not the digest
  of zeros (the start of a blank disk is the same on every server, and anyone can compute it).

A disk's name is not part of its proof: the kernel names disks in the order it finds them, so
the server's own OS may call a disk sda and our ISO (booted from a USB stick that took sda) sdb.
`pair` finds each held disk among the agent's disks: the one of the same name when it proves to
be it, else the one other disk that does (by WWID or serial, or, for a disk with neither, by its
first 64 KiB). The capture keeps its name for the disk (READY tells the agent which of its disks
that is: HeldDisk.agent_name).

docs/resume.md says the same for operators.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ... import protocol as P
from ... import records


@dataclass
class _Said:
    """The identity facts a DISK header's `source` holds (the rest of it is not looked at)."""

    serial: P.Str | None = None
    wwid: P.Str | None = None
    head: P.Str | None = None
    name: P.Str | None = None       # the agent's name for it when it sent it (the kernel's)


def recorded(h: P.DiskHeader) -> P.DiskIdentity:
    """A disk as its DISK header described it (the journal keeps that header)."""
    try:
        said = records.decode(h.source, _Said, f"disk {h.name!r:.40} source")
    except records.RecordError:
        return P.DiskIdentity(h.name, h.size)
    ident = P.DiskIdentity.of(h.name, h.size, serial=said.serial, wwid=said.wwid)
    head = said.head if said.head and P.HEX_DIGEST.fullmatch(said.head) else ""
    return dataclasses.replace(ident, head=head)


def agent_name(name: str, source: dict) -> str:
    """The agent's own name for a disk the capture calls `name` (its DISK header's `source`): they
    differ when the kernel named a held disk otherwise (wire.capture_names)."""
    try:
        said = records.decode(source, _Said, f"disk {name!r:.40} source")
    except records.RecordError:
        return name
    return said.name or name


def mismatch(held: P.DiskIdentity, claimed: P.DiskIdentity | None) -> str | None:
    """None when `claimed` proves to be the `held` disk; else what does not match, for the
    refusal (it names the disk, never the held values an impostor could learn from)."""
    name = held.name
    if claimed is None:
        return (f"disk {name}: this agent did not say which disk it is (no identity in its HELLO: "
                f"an agent older than this receiver; update the ISO)")
    how = held.matched_by(claimed)
    if how is None:
        return f"disk {name}: another disk ({claimed.describe()}) than the one held"
    if held.head:
        if not claimed.head:
            return f"disk {name}: the agent sent no digest of its first 64 KiB, and the held disk has one"
        if claimed.head != held.head:
            return f"disk {name}: its first 64 KiB are not those of the held disk"
    if how == P.DiskIdentity.WEAK and (not held.head or held.head == P.DiskIdentity.zero_head(held.size)):
        why = "are all zeros" if held.head else "were not recorded"
        return (f"disk {name}: nothing proves it is the held disk (no WWID, no serial, and its first "
                f"64 KiB {why})")
    return None


@dataclass
class Pairing:
    """Which of an agent's disks (HELLO.identities) each held disk is."""

    names: dict[str, str] = field(default_factory=dict)   # held name -> the agent's name for it
    how: dict[str, str] = field(default_factory=dict)     # held name -> DiskIdentity.matched_by
    wrong: list[str] = field(default_factory=list)        # why a held disk is none of them

    @property
    def renamed(self) -> dict[str, str]:
        return {h: a for h, a in self.names.items() if h != a}


def pair(held: list[P.DiskIdentity], claims: tuple[P.DiskIdentity, ...] | list[P.DiskIdentity]) -> Pairing:
    """Each held disk's match among `claims` (each claim is one disk at most): the same name
    first, else the only other claim that proves to be it."""
    by_name = {c.name: c for c in claims}
    out = Pairing()
    used: set[str] = set()
    for h in held:
        c = by_name.get(h.name)
        if c is not None and mismatch(h, c) is None:
            out.names[h.name], out.how[h.name] = c.name, h.matched_by(c) or ""
            used.add(c.name)
    why: dict[str, str] = {}
    for h in held:
        if h.name in out.names:
            continue
        # Under the held name, as if the kernel had found it in the same order as before.
        found = [c for c in claims if c.name not in used and c.name != h.name
                 and mismatch(h, dataclasses.replace(c, name=h.name)) is None]
        if len(found) == 1:
            c = found[0]
            out.names[h.name] = c.name
            out.how[h.name] = h.matched_by(dataclasses.replace(c, name=h.name)) or ""
            used.add(c.name)
        elif found:
            why[h.name] = (f"disk {h.name}: {' and '.join(c.name for c in found)} of this agent all prove to be it "
                           f"(the same WWID, serial or first 64 KiB): capture only one of them (the paths "
                           f"of one multipath LUN are one disk)")
        elif h.name in by_name or not claims:
            why[h.name] = mismatch(h, by_name.get(h.name)) or ""
        else:
            why[h.name] = (f"disk {h.name}: none of this agent's disks ({', '.join(sorted(by_name))}) is it "
                           f"(not by WWID, serial or first 64 KiB)")
    out.wrong = [why[h.name] for h in held if h.name in why]
    return out
