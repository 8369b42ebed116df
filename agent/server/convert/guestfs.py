"""The one libguestfs layer: reads and writes the converted guest's files through guestfish.

Why guestfish and not the Python binding: our .venv is built from /usr/bin/python3 without the
system site-packages, so python3-guestfs is not importable there (and the PyPI sources must
match the installed libguestfs exactly); guestfish is the same library, and going through
agent/runcmd.py logs every call like every other tool we drive.

One appliance launch per conversion (each costs ~20-40 s under TCG): `guestfish --listen`
keeps the handle, with every disk of the guest added, and each operation is a short
`guestfish --remote` call. A remote guestfish exits on the first failed command, so this layer
only issues commands that must succeed (it asks is-file / is-dir first); any failure is a real
one and ends the conversion with guestfish's own message.

The guest is untrusted input, so nothing here grows with what it holds: a file is read only
when guestfish says it is at most MAX_CONFIG_BYTES (downloaded to a local file, read back
with that cap), and directories are listed NUL-separated (ls0) in bounded pieces and matched
here, never as guestfish's newline-separated text (a file name may hold a newline). A name
holding a control character is not passed on at all: it is left alone and said.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import signal
import tempfile
from dataclasses import dataclass
from typing import Iterator

from ...errors import ColdcloneError, CommandError
from ...runcmd import run
from ...units import human_bytes
from .model import GuestOS, Volume

log = logging.getLogger("coldclone.convert")


@dataclass(frozen=True)
class Accel:
    kvm: bool
    reason: str

    @property
    def name(self) -> str:
        return "kvm" if self.kvm else "tcg"

    def env(self) -> dict[str, str]:
        """The environment libguestfs (and virt-v2v) run with: the direct backend, and TCG forced
        where KVM does not work (libguestfs would try KVM and its qemu would abort)."""
        env = dict(os.environ, LIBGUESTFS_BACKEND="direct")
        if not self.kvm:
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        return env


def detect_accel() -> Accel:
    """Does KVM work for a guest as libguestfs starts it (-cpu host)? Opening /dev/kvm is not
    enough: on some nested hosts qemu aborts at the first vCPU MSR set-up (kvm_buf_set_msrs).
    A qemu with no disk that is still running after 2 s (killed by `timeout`, exit 124) ran its
    vCPU under KVM."""
    if os.environ.get("COLDCLONE_FORCE_TCG") == "1":
        return Accel(False, "COLDCLONE_FORCE_TCG=1 in the environment")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel(False, "/dev/kvm is missing or not accessible: libguestfs runs under TCG (slower)")
    try:
        res = run(["timeout", "2", "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-M", "q35",
                   "-m", "64", "-display", "none", "-nodefaults", "-no-reboot", "-serial", "none"],
                  check=False, quiet=True)
    except CommandError as e:
        return Accel(False, f"cannot probe KVM ({e}): libguestfs runs under TCG (slower)")
    if res.returncode == 124:
        return Accel(True, "KVM works (a probe guest ran under -accel kvm -cpu host)")
    why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    return Accel(False, f"KVM does not work here (probe qemu: {why}): libguestfs runs under TCG (slower)")


def tool_version(argv: list[str]) -> str:
    try:
        out = run(argv, quiet=True).stdout.strip()
    except CommandError:
        return "unavailable"
    return out.splitlines()[0] if out else "unknown"


# The largest file the fix-ups read: real configuration files are far smaller (a grub.cfg that
# lists many kernels is some hundred KiB); a bigger one is no file we can fix, and holding it
# would cost the conversion server memory in proportion to what the guest holds.
MAX_CONFIG_BYTES = 4 << 20
# The most entries of one guest directory that are matched against a pattern.
MAX_DIR_ENTRIES = 50_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Skipped(ColdcloneError):
    """A guest file the fix-ups leave alone, and why (said as a warning, never fatal)."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path} left alone: {why}")
        self.path = path


def odd_name(path: str) -> Skipped | None:
    """A name with a control character (a newline ...) is not ours to pass on: Skipped."""
    if _CONTROL.search(path):
        return Skipped(repr(path), "its name holds a control character (a newline?), so it is not "
                                   "passed to guestfish; check that file by hand")
    return None


_APPLIANCE_DEV = re.compile(r"/dev/sd([a-z]+)(\d*)$")


def appliance_slot(device: str) -> tuple[int, int | None] | None:
    """/dev/sdb3 -> (1, 3): the appliance names the disks sda, sdb ... in the order they were
    added, which is the capture's disk order."""
    m = _APPLIANCE_DEV.match(device)
    if not m:
        return None
    n = 0
    for ch in m.group(1):
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1, int(m.group(2)) if m.group(2) else None


def mount_plan(os_: GuestOS, filesystems: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(mountpoint, device) to mount, shortest mountpoint first so / is mounted before /boot and
    /var; and a warning for each fstab mount left out.

    inspect-get-mountpoints passes a name it cannot map to the appliance through as it is: an md
    array no mdadm.conf ARRAY line names (the appliance assembles a foreign array as /dev/md127,
    not the guest's /dev/md0), or one whose member disks were not captured. Mounting that ends
    the conversion on a guestfish error although the guest is there to fix, so / is always the
    root inspection found the OS on, and any other mount whose device the appliance does not
    have is left out (with what is below it) and said."""
    mounts: list[tuple[str, str]] = [("/", os_.root)]
    skipped: list[str] = []
    warnings: list[str] = []
    for mp, dev in sorted(os_.mountpoints, key=lambda p: len(p[0])):
        if mp == "/":
            continue
        under = next((s for s in skipped if mp.startswith(s.rstrip("/") + "/")), None)
        if dev not in filesystems or under:
            skipped.append(mp)
            why = (f"it is below {under}, which was not mounted" if under else
                   f"its device {dev} (the guest's fstab) is none of the filesystems on the captured disks")
            warnings.append(f"{mp} not mounted for the fix-ups: {why}; its files were not checked, and "
                            f"the converted guest mounts it only if that device is attached")
            continue
        mounts.append((mp, dev))
    return mounts, warnings


class Guest:
    """A guestfish server holding the converted images, read-write, one appliance."""

    def __init__(self, images: list[str], accel: Accel, *, readonly: bool = False):
        self.images = images
        self.accel = accel
        self.readonly = readonly
        self.pid: str | None = None
        self.tmp = tempfile.mkdtemp(prefix="coldclone-convert-")

    # -------------------------------------------------------------- plumbing
    def __enter__(self) -> "Guest":
        argv = ["guestfish", "--listen", "--ro" if self.readonly else "--rw"]
        for img in self.images:
            argv += ["--format=qcow2", "-a", img]
        out = run(argv, env=self.accel.env(), timeout=60, leaves_server=True).stdout
        m = re.search(r"GUESTFISH_PID=(\d+)", out)
        if not m:
            raise CommandError(argv, 0, f"guestfish --listen printed no GUESTFISH_PID: {out.strip()!r}")
        self.pid = m.group(1)
        return self

    def __exit__(self, *exc) -> None:
        if self.pid is not None:
            # umount-all syncs what we wrote; exit ends the server and the appliance. If the server
            # already died on a failed command, these fail too: nothing more to clean up there.
            # A server that does not answer (a hung appliance) is ended by its pid, so no
            # appliance outlives the conversion holding the capture's filesystem busy.
            for cmd in (["umount-all"], ["shutdown"], ["exit"]):
                try:
                    failed = run(["guestfish", f"--remote={self.pid}", "--", *cmd], check=False,
                                 timeout=120).returncode != 0
                except CommandError:
                    failed = True
                if failed:
                    try:
                        os.kill(int(self.pid), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                    break
            self.pid = None
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)

    def fish(self, *cmd: str, timeout: float = 600) -> str:
        return run(["guestfish", f"--remote={self.pid}", "--", *cmd], timeout=timeout, quiet=True,
                   hint="guestfish could not do this on the converted image").stdout

    def launch(self) -> None:
        self.fish("run", timeout=900)

    # ------------------------------------------------------------- inspection
    def inspect(self) -> list[GuestOS]:
        out = []
        for root in self.fish("inspect-os").split():
            mps = []
            for line in self.fish("inspect-get-mountpoints", root).splitlines():
                mp, _, dev = line.partition(": ")
                if mp and dev:
                    mps.append((mp.strip(), dev.strip()))

            def get(what: str) -> str:
                return self.fish(f"inspect-get-{what}", root).strip()

            def num(what: str) -> int:
                try:
                    return int(get(what))
                except ValueError:
                    return 0

            out.append(GuestOS(root=root, type=get("type"), distro=get("distro"),
                               product=get("product-name"), major=num("major-version"),
                               minor=num("minor-version"), mountpoints=mps))
        return out

    def list_filesystems(self) -> list[tuple[str, str]]:
        """(device, fstype) of every mountable the appliance has (partitions, md arrays, LVs ...),
        named as inspect-get-mountpoints names them."""
        out = []
        for line in self.fish("list-filesystems").splitlines():
            dev, _, fstype = line.partition(": ")
            if dev.strip():
                out.append((dev.strip(), fstype.strip()))
        return out

    def volumes(self) -> list[Volume]:
        vols = []
        for dev, fstype in self.list_filesystems():
            slot = appliance_slot(dev)
            if slot is None or fstype in ("unknown", ""):
                continue    # LVs, md arrays: named by the guest by UUID/name, not by position
            uuid = self.fish("vfs-uuid", dev).strip() if fstype != "linux_raid_member" else ""
            vols.append(Volume(device=dev, disk_index=slot[0], partition=slot[1], fstype=fstype, uuid=uuid))
        return vols

    def mount_os(self, os_: GuestOS) -> list[str]:
        """Mount the guest's filesystems for the fix-ups; returns a warning for each it could not."""
        mounts, warnings = mount_plan(os_, {dev for dev, _ in self.list_filesystems()})
        for mp, dev in mounts:
            self.fish("mount", dev, mp)
        return warnings

    # ------------------------------------------------------------------ files
    def is_file(self, path: str) -> bool:
        return self.fish("is-file", path).strip() == "true"

    def is_dir(self, path: str) -> bool:
        return self.fish("is-dir", path).strip() == "true"

    def ls(self, path: str, skipped: list[Skipped] | None = None) -> Iterator[str]:
        """The names in a guest directory (none if it is not one), NUL-separated as guestfish's
        ls0 writes them to a local file, read in pieces: at most MAX_DIR_ENTRIES of them (the
        rest is said in `skipped`)."""
        if not self.is_dir(path):
            return
        local = os.path.join(self.tmp, "ls0")
        self.fish("ls0", path, local)
        try:
            with open(local, "rb") as f:
                rest, count = b"", 0
                while chunk := f.read(1 << 16):
                    *names, rest = (rest + chunk).split(b"\0")
                    for name in names:
                        if name:
                            count += 1
                            if count > MAX_DIR_ENTRIES:
                                if skipped is not None:
                                    skipped.append(Skipped(path, f"more than {MAX_DIR_ENTRIES} entries: only "
                                                                 f"the first were checked"))
                                return
                            yield os.fsdecode(name)
                    if len(rest) > 4096:       # no name is that long: not an ls0 listing
                        raise CommandError(["guestfish", "ls0", path], 0, f"ls0 of {path} wrote no NUL-separated names")
        finally:
            os.unlink(local)

    def glob(self, pattern: str) -> tuple[list[str], list[Skipped]]:
        """The guest paths an absolute pattern matches, component by component as glob(3) does
        (a wildcard matches no leading '.'; a directory component must be a directory), and
        the names left out for holding a control character."""
        found, skipped = ["/"], []
        parts = [p for p in pattern.split("/") if p]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = []
            for base in found:
                if not any(c in part for c in "*?["):
                    path = os.path.join(base, part)
                    if last or self.is_dir(path):
                        nxt.append(path)
                    continue
                for name in self.ls(base, skipped):
                    if name.startswith(".") and not part.startswith("."):
                        continue
                    if not fnmatch.fnmatchcase(name, part):
                        continue
                    path = os.path.join(base, name)
                    bad = odd_name(path)
                    if bad is not None:
                        skipped.append(bad)
                    elif last or self.is_dir(path):
                        nxt.append(path)
            found = nxt
        return sorted(found), skipped

    def read(self, path: str) -> str | None:
        """The text of a regular file of the guest (None if there is none), at most
        MAX_CONFIG_BYTES of it: a larger file raises Skipped before a byte of it is copied.
        Config files are read as UTF-8 with their odd bytes kept (surrogateescape), so writing
        back changes only what a fix changed."""
        bad = odd_name(path)
        if bad is not None:
            raise bad
        if not self.is_file(path):
            return None
        size = int(self.fish("filesize", path).strip())
        if size > MAX_CONFIG_BYTES:
            raise Skipped(path, f"{human_bytes(size)}, more than the {human_bytes(MAX_CONFIG_BYTES)} a "
                                f"configuration file may hold: not read, check it by hand")
        local = os.path.join(self.tmp, "read")
        self.fish("download", path, local)
        try:
            with open(local, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        finally:
            os.unlink(local)
        if len(data) > MAX_CONFIG_BYTES:
            raise Skipped(path, f"larger than the {human_bytes(MAX_CONFIG_BYTES)} a configuration file may hold")
        return data.decode("utf-8", "surrogateescape")

    def write(self, path: str, text: str) -> None:
        """Replace a guest file's content, keeping its owner and mode (upload writes in place)."""
        local = os.path.join(self.tmp, "write")
        with open(local, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))
        self.fish("upload", local, path)
        os.unlink(local)

    def is_symlink(self, path: str) -> bool:
        return self.fish("is-symlink", path).strip() == "true"

    def remove(self, path: str) -> None:
        self.fish("rm", path)

    # -------------------------------------------- binaries and the guest's own tools
    def download(self, path: str, local: str) -> None:
        """A guest file (an initramfs, a boot loader) to a local path, byte for byte."""
        self.fish("download", path, local)

    def checksum(self, path: str) -> str:
        return self.fish("checksum", "sha256", path).strip()

    def copy(self, src: str, dst: str) -> None:
        self.fish("cp", src, dst)

    def move(self, src: str, dst: str) -> None:
        self.fish("mv", src, dst)

    def mkdir_p(self, path: str) -> None:
        self.fish("mkdir-p", path)

    def command(self, argv: list[str], timeout: float = 1800) -> str:
        """Run one of the guest's own programs in its root (the appliance's kernel, /dev, /proc
        and /sys bound in), as virt-v2v does for update-initramfs and dracut."""
        return self.fish("command", " ".join(argv), timeout=timeout)


class GuestFiles:
    """The guest as a guestos.network.FileSource (read, listdir, digest): the agent's own
    parsers (guestos.netconfig, guestos.esp) read it as they read a mounted tree. The guest is
    untrusted here as in the fix-ups: a file larger than MAX_CONFIG_BYTES, a directory beyond
    MAX_DIR_ENTRIES or a name holding a control character is not read but kept in `skipped`
    (the conversion says each as a warning), and reads as an absent file."""

    def __init__(self, guest: Guest):
        self.guest = guest
        self.skipped: list[Skipped] = []

    def read(self, path: str) -> str | None:
        try:
            return self.guest.read(path)
        except Skipped as e:
            self.skipped.append(e)
            return None

    def listdir(self, path: str) -> list[str]:
        names = []
        for name in self.guest.ls(path, self.skipped):
            bad = odd_name(os.path.join(path, name))
            if bad is not None:
                self.skipped.append(bad)
            else:
                names.append(name)
        return sorted(names)

    def digest(self, path: str) -> str | None:
        bad = odd_name(path)
        if bad is not None:
            self.skipped.append(bad)
            return None
        return self.guest.checksum(path) if self.guest.is_file(path) else None
