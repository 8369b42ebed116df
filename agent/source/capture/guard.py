"""The read-only guard: source disks are sacred.

Before a single byte is read (or a source filesystem is mounted), the whole
device tree of every source - the disk, each of its partitions, and their
holders such as md arrays and device-mapper volumes - is set read-only in the
kernel (BLKROSET), so not even a stray mount or another tool can write to it
while we work.

The guard is shared and reference counted across processes: a disk captured by
one coldclone while another captures one of its partitions (or the TUI inspects
it) stays read-only until the last user ends. The original state of each
device and the processes using it are recorded in /run/coldclone/guard/ (one
small JSON per device number), so that whatever a killed agent left behind is
restored by the next run (its pids are dead) or by `coldclone release`, and a
leftover read-only flag is never mistaken for the device's own state.

One capture at a time per named device: a second capture of the same disk (the
TUI on tty1 and on the serial console, say) is refused by name (flock, by
device number, so /dev/sda and a /dev/disk/by-id link are the same disk).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass, field

from ... import devnames, records
from ...errors import SourceError

log = logging.getLogger("coldclone.guard")

BLKROSET = 0x125D
BLKROGET = 0x125E
LOCK_DIR = "/run/coldclone/locks"
GUARD_DIR = "/run/coldclone/guard"
SYS_BLOCK = devnames.SYS_BLOCK


def get_ro(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, BLKROGET, struct.pack("i", 0))
        return struct.unpack("i", buf)[0] != 0
    finally:
        os.close(fd)


def set_ro(path: str, ro: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1 if ro else 0))
    finally:
        os.close(fd)


def tree_names(names: list[str], sysfs: str = SYS_BLOCK) -> list[str]:
    """Kernel names of the whole device tree of each name: its disk (a partition's parent),
    every partition of that disk, and, recursively, what is built on them (holders: md,
    dm ...) and what they are built from (slaves: an md array's member partitions, and so
    their disks).

    A write to any of them reaches the source's bytes, so all of them are guarded together.
    """
    out: list[str] = []

    def add(name: str) -> None:
        if name not in out:
            out.append(name)

    def listing(name: str, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(sysfs, name, rel)))
        except OSError:
            return []

    def whole(name: str) -> str:
        if os.path.exists(os.path.join(sysfs, name, "partition")):
            # /sys/class/block/sda1 links into .../block/sda/sda1: the parent is the disk.
            return os.path.basename(os.path.dirname(os.path.realpath(os.path.join(sysfs, name))))
        return name

    for name in names:
        add(whole(name))
    i = 0
    while i < len(out):   # grows as relatives are found; each name is expanded once
        name = out[i]
        disk = whole(name)
        for rel in [disk] + devnames.partition_names(disk, sysfs) + listing(name, "holders") + listing(name, "slaves"):
            add(rel)
        i += 1
    return out


def device_tree(paths: list[str]) -> list[str]:
    """/dev paths of the whole device tree of the given devices (see tree_names)."""
    names = tree_names([devnames.kernel_name(p) for p in paths])
    out = []
    given = {devnames.kernel_name(p): p for p in paths}
    for name in names:
        dev = given.get(name) or devnames.dev_path(name)
        if os.path.exists(dev):
            out.append(dev)
    return out


def devno(path: str) -> tuple[int, int]:
    rdev = os.stat(path).st_rdev
    return os.major(rdev), os.minor(rdev)


# --- who uses a guarded device: the shared record in /run ----------------------------

def process_start(pid: int) -> int | None:
    """The start time of pid (clock ticks since boot), None if it is gone: a pid alone
    could have been reused by an unrelated process since the record was written."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
    return int(text.rsplit(")", 1)[1].split()[19])


@dataclass
class Owner:
    pid: int
    start: int

    @classmethod
    def me(cls) -> "Owner":
        return cls(os.getpid(), process_start(os.getpid()) or 0)

    def alive(self) -> bool:
        return process_start(self.pid) == self.start


@dataclass
class GuardRecord:
    """One guarded device: its state before coldclone touched it and who is using it now.
    An owner appears once per guard holding the device (a process may hold it twice)."""

    dev: str
    devno: str          # "MAJOR:MINOR"
    was_ro: bool
    owners: list[Owner] = field(default_factory=list)


class Registry:
    """The records in guard_dir; every read-modify-write happens under one flock."""

    def __init__(self, guard_dir: str = GUARD_DIR):
        self.dir = guard_dir

    @contextlib.contextmanager
    def locked(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)

    def _path(self, num: str) -> str:
        return os.path.join(self.dir, "dev-%s.json" % num.replace(":", "-"))

    def load(self, num: str) -> GuardRecord | None:
        try:
            with open(self._path(num)) as f:
                return records.loads(f.read(), GuardRecord, self._path(num))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            # A torn record cannot tell the original state: leave the device as it is.
            log.warning("guard record %s unreadable (%s); removing it", self._path(num), e)
            self.remove(num)
            return None

    def save(self, rec: GuardRecord) -> None:
        tmp = self._path(rec.devno) + ".tmp"
        with open(tmp, "w") as f:
            f.write(records.dumps(rec, indent=1) + "\n")
        os.replace(tmp, self._path(rec.devno))

    def remove(self, num: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(num))

    def all(self) -> list[GuardRecord]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        recs = []
        for n in names:
            if n.startswith("dev-") and n.endswith(".json"):
                rec = self.load(n[4:-5].replace("-", ":"))
                if rec is not None:
                    recs.append(rec)
        return recs


def _restore(rec: GuardRecord, why: str) -> str:
    """Put one device back as it was before coldclone; a line saying what was done.

    BLKROGET reports the device's own flag (what BLKROSET sets) or'ed with the disk's
    driver flag (losetup -r, a write-protected card), and the own flag of a loop device
    outlives its detach. So the own flag is always cleared first, and set again only if
    that made a device that was read-only writable: the original state comes back without
    leaving a flag of ours behind that would make the next disk on that loop read-only.
    """
    try:
        if not os.path.exists(rec.dev) or "%d:%d" % devno(rec.dev) != rec.devno:
            return f"{rec.dev} ({rec.devno}) is gone; nothing to restore{why}"
        name = os.path.basename(rec.dev)
        # (a partition of a loop, loop1p3, has no loop/ of its own: it goes with its disk)
        if (name.startswith("loop") and not os.path.exists(f"/sys/class/block/{name}/partition")
                and not os.path.exists(f"/sys/block/{name}/loop")):
            # A loop detached meanwhile (mode=used's read-only range loops come and go under
            # the guard): what it showed is gone, and a flag of ours left on the free number
            # would make the next image attached there read-only.
            set_ro(rec.dev, False)
            return f"{rec.dev} was detached meanwhile; its read-only flag cleared{why}"
        set_ro(rec.dev, False)
        if rec.was_ro and not get_ro(rec.dev):
            set_ro(rec.dev, True)
    except OSError as e:
        log.warning("could not restore %s: %s", rec.dev, e.strerror)
        return f"{rec.dev}: could not restore its read-only state ({e.strerror}){why}"
    if rec.was_ro:
        return f"{rec.dev} left read-only (it was read-only before){why}"
    return f"{rec.dev} restored to read-write{why}"


def _tree_text(dev: str, members: list[str]) -> str:
    """A guarded tree in one phrase: /dev/sda1: 3 devices (sda, sda1, sda2)."""
    names = [os.path.basename(m) for m in members]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"{dev}: {len(names)} device{'s' if len(names) != 1 else ''} ({shown})"


def release_stale(guard_dir: str = GUARD_DIR) -> list[str]:
    """Restore every device whose users have all died (a kill -9'ed agent, a power-cut
    TUI); what was done, one line per device. Live users' devices are left alone."""
    reg = Registry(guard_dir)
    with reg.locked():
        return _sweep(reg)


def _sweep(reg: Registry) -> list[str]:
    done = []
    # Holders and partitions first, the disk last: the reverse of how they were guarded.
    for rec in sorted(reg.all(), key=lambda r: r.dev, reverse=True):
        live = [o for o in rec.owners if o.alive()]
        if live:
            if len(live) != len(rec.owners):
                rec.owners = live
                reg.save(rec)
            continue
        dead = ", ".join(str(o.pid) for o in rec.owners) or "none"
        done.append(_restore(rec, f" (left by coldclone pid {dead}, which is gone)"))
        reg.remove(rec.devno)
    return done


def held(guard_dir: str = GUARD_DIR) -> list[GuardRecord]:
    """Records whose users still run."""
    return [r for r in Registry(guard_dir).all() if any(o.alive() for o in r.owners)]


@dataclass
class ReadOnlyGuard:
    """Context manager: the device tree of `devices` read-only while any guard holds it."""

    devices: list[str]
    exclusive: bool = True            # one capture at a time per named device
    lock_dir: str = LOCK_DIR
    guard_dir: str = GUARD_DIR
    _held: list[GuardRecord] = field(default_factory=list)
    _locks: list[int] = field(default_factory=list)

    def __enter__(self) -> "ReadOnlyGuard":
        try:
            if self.exclusive:
                for dev in self.devices:
                    self._lock(dev)
            for dev in self.devices:
                self._check_block(dev)
            targets = device_tree(self.devices)
            reg = Registry(self.guard_dir)
            with reg.locked():
                for line in _sweep(reg):   # a killed agent's leftovers get their true state back first
                    log.info("%s", line)
                me = Owner.me()
                # Read every previous state before changing any: a partition reports
                # read-only as soon as its disk is, and must not be left so afterwards.
                recs = []
                for path in targets:
                    num = "%d:%d" % devno(path)
                    rec = reg.load(num) or GuardRecord(path, num, self._state(path))
                    recs.append(rec)
                shared: dict[str, list[int]] = {}
                for rec in recs:
                    self._guard_one(rec)
                    others = sorted({o.pid for o in rec.owners})
                    rec.owners.append(me)
                    reg.save(rec)
                    self._held.append(rec)
                    if others:
                        shared[rec.dev] = others
                        log.debug("%s read-only (shared with coldclone pid %s)", rec.dev,
                                  ", ".join(map(str, others)))
                    else:
                        log.debug("%s set read-only in the kernel (was %s)", rec.dev,
                                  "ro" if rec.was_ro else "rw")
                # One line per disk tree at the default level (each device's at -v); none for a
                # tree this process holds already (the inspection mounts one filesystem inside
                # another: the outer guard said it).
                for dev, members in self._trees().items():
                    pids = sorted({p for m in members for p in shared.get(m, [])} - {me.pid})
                    if all(me.pid in shared.get(m, []) for m in members):
                        continue
                    was_rw = [r for r in recs if r.dev in members and not r.was_ro and r.dev not in shared]
                    how = (f"shared with coldclone pid {', '.join(map(str, pids))}" if pids else
                           "were read-write" if len(was_rw) == len(members) else
                           "were read-only already" if not was_rw else f"{len(was_rw)} were read-write")
                    log.info("%s set read-only in the kernel (%s)", _tree_text(dev, members), how)
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self, dev: str) -> None:
        try:
            rdev = os.stat(dev).st_rdev
        except OSError:
            return  # _check_block() names the missing device
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
        lock = os.path.join(self.lock_dir, f"dev-{os.major(rdev)}-{os.minor(rdev)}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SourceError(
                f"{dev} is being captured by another coldclone (pid {holder}, perhaps on another "
                f"console); wait for that capture to finish or cancel it there") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._locks.append(fd)

    def _check_block(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise SourceError(f"source {path}: {e.strerror}; check the device name") from None
        if not stat.S_ISBLK(st.st_mode):
            raise SourceError(
                f"source {path} is not a block device; coldclone captures disks "
                f"(e.g. /dev/sda, /dev/md127, /dev/cciss/c0d0)"
            )

    def _state(self, path: str) -> bool:
        try:
            return get_ro(path)
        except OSError as e:
            raise SourceError(f"cannot query {path}: {e.strerror}") from None

    def _guard_one(self, rec: GuardRecord) -> None:
        try:
            set_ro(rec.dev, True)
            now = get_ro(rec.dev)
        except OSError as e:
            raise SourceError(
                f"cannot set {rec.dev} read-only in the kernel (BLKROSET: {e.strerror}); "
                f"refusing to read a source that is not write-protected (run as root)"
            ) from None
        if not now:
            raise SourceError(f"{rec.dev} did not become read-only (BLKROSET ignored); refusing to continue")

    def _trees(self) -> dict[str, list[str]]:
        """Each named device and the held devices of its tree (the disk first)."""
        held = [r.dev for r in self._held]
        trees = {}
        for dev in self.devices:
            members = [d for d in device_tree([dev]) if d in held]
            if members:
                trees[dev] = members
        return trees

    def release(self) -> None:
        if self._held:
            trees = self._trees()
            stays: dict[str, list[str]] = {}
            failed: dict[str, str] = {}
            reg = Registry(self.guard_dir)
            me = Owner.me()
            with reg.locked():
                while self._held:
                    mine = self._held.pop()
                    rec = reg.load(mine.devno)
                    if rec is None:
                        # Someone removed the record (coldclone release on a live pid cannot,
                        # so only by hand): we still know the original state.
                        rec = GuardRecord(mine.dev, mine.devno, mine.was_ro, [me])
                    if me in rec.owners:
                        rec.owners.remove(me)
                    live = [o for o in rec.owners if o.alive()]
                    if live:
                        rec.owners = live
                        reg.save(rec)
                        stays[rec.dev] = sorted({str(o.pid) for o in live})
                        # another capture holding it is not the usual case: said per device
                        log.log(logging.INFO if any(o.pid != me.pid for o in live) else logging.DEBUG,
                                "%s stays read-only: still used by coldclone pid %s", rec.dev,
                                ", ".join(stays[rec.dev]))
                        continue
                    line = _restore(rec, "")
                    log.debug("%s", line)
                    if "could not restore" in line:
                        failed[rec.dev] = line      # (_restore warned already)
                    reg.remove(rec.devno)
            for dev, members in trees.items():
                done = [m for m in members if m not in stays]
                if not done:
                    continue        # still held (by an outer guard of this process, or another capture)
                bad = [m for m in done if m in failed]
                what = _tree_text(dev, done) + ("" if len(done) == len(members) else
                                                f" ({len(members) - len(done)} more stay read-only)")
                log.info("%s %s", what, f"restored but for {', '.join(bad)} (see the warning)" if bad else
                         "back to the read-only state they had before")
        while self._locks:
            os.close(self._locks.pop())   # closing drops the flock

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def guarded(self) -> list[str]:
        return [r.dev for r in self._held]
