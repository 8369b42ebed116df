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

docs/resume.md says the same for operators.
"""

from __future__ import annotations

from ... import protocol as P


def recorded(h: P.DiskHeader) -> P.DiskIdentity:
    """A disk as its DISK header described it (the journal keeps that header)."""
    f = P.JsonFields(h.source, f"disk {h.name!r:.40} source")
    try:
        ident = P.DiskIdentity.of(h.name, h.size, serial=f.str("serial"), wwid=f.str("wwid"))
        head = f.str("head", "") or ""
    except P.ProtocolError:
        return P.DiskIdentity(h.name, h.size)
    return P.DiskIdentity(ident.name, ident.size, ident.serial, ident.wwid,
                          head if P.HEX_DIGEST.fullmatch(head) else "")


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
