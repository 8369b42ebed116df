"""Harness for headless captures of the live ISO in QEMU (tests/vm, tests/testbed/vmdemo.py).

What a headless VM test needs, all real:
  * a conversion server: OpenSSH sshd on the host's 127.0.0.1 with the forced-command
    coldclone-receive key (tests/testbed/sshd.py); the guest reaches it as 10.0.2.2:PORT
    through QEMU's user network; its host key is pinned on the kernel command line;
  * the agent's identity handed to the guest by QEMU, not baked into the ISO:
    ``-fw_cfg name=opt/coldclone/identity,file=KEY`` and
    ``coldclone.identity=/sys/firmware/qemu_fw_cfg/by_name/opt/coldclone/identity/raw``
    (the image's coldclone-fwcfg.service loads qemu_fw_cfg early);
  * source disks: raw image files with an installer-made layout (tests/testbed/synthdisk.py),
    attached as virtio, behind QEMU's megasas (LSI MegaRAID) controller, or as usb-storage on
    an EHCI or xHCI bus;
  * the console contract of ``coldclone headless``: ``coldclone: `` lines, the inventory
    and the estimate as JSON between marker lines, and a last line
    ``COLDCLONE-HEADLESS-OK capture_id=..`` or ``COLDCLONE-HEADLESS-FAILED exit=N: ...``;
  * the verdict on bytes: ``qemu-img compare`` of the received qcow2 with the source image,
    and the source image's sha256 unchanged by the run.
Standard library plus the agent's testbed (root: loop devices, sshd).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.runcmd import run
from tests.testbed import synthdisk
from tests.testbed.files import sha256_of  # noqa: F401  (the vm tests use guest.sha256_of)
from tests.testbed.sshd import Sshd

try:
    from . import vmboot
    from .liveshell import LiveShell
except ImportError:  # run as a plain module (tests/testbed/vmdemo.py puts tests/vm on sys.path)
    import vmboot  # type: ignore[no-redef]
    from liveshell import LiveShell  # type: ignore[no-redef]

MiB = 1 << 20
HOST_FROM_GUEST = "10.0.2.2"          # QEMU user networking: the host's 127.0.0.1
FWCFG_DIR = "/sys/firmware/qemu_fw_cfg/by_name/opt/coldclone"

# the console contract of `coldclone headless` (docs/cli.md)
INVENTORY_BEGIN, INVENTORY_END = "COLDCLONE-INVENTORY-JSON-BEGIN", "COLDCLONE-INVENTORY-JSON-END"
ESTIMATE_BEGIN, ESTIMATE_END = "COLDCLONE-ESTIMATE-JSON-BEGIN", "COLDCLONE-ESTIMATE-JSON-END"
OK_LINE, FAILED_LINE = "COLDCLONE-HEADLESS-OK", "COLDCLONE-HEADLESS-FAILED"
# printed by the image's headless-run before `coldclone headless` starts: the boot is over
STARTING_LINE = "coldclone: headless capture starting"
# the rescue shell's autologin prompt (coldclone-rescue.service after a failed run)
ROOT_PROMPT = "root@coldclone"
# Every headless boot also runs the image's smoke check (coldclone-smoke.service with
# coldclone.smoke_done=shell: it prints the line and leaves the machine to the headless run):
# the boot path's facts (firmware, the agent's venv imports, DHCP on the NIC) come with the
# capture that boot does, instead of costing a boot of their own (each boot path is proven
# once: kernel by test_lvm_used, bios and uefi by test_headless, bios-usb by test_multipath,
# uefi-usb by test_nfs).
SMOKE_LINE = vmboot.SMOKE_LINE

_KERNEL_LINE = re.compile(r"^\s*\[\s*\d+\.\d+\]")



# --------------------------------------------------------------------------- the server
class HostServer:
    """The conversion server as the guest sees it: sshd on 127.0.0.1, reached as 10.0.2.2."""

    def __init__(self, workdir: str | None = None, receiver_root: str | None = None,
                 receiver_args: str = ""):
        # a workdir made here is removed when the `with` block ends (keys, logs, captures)
        self.own_workdir = workdir is None and receiver_root is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="coldclone-vmsshd-", dir="/var/tmp")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)     # the receiving user must reach its root
        # receiver_args: more words of the forced command (e.g. --convert)
        self.sshd = Sshd(workdir=os.path.join(self.workdir, "sshd"), receiver_root=receiver_root,
                         receiver_args=receiver_args)

    def start(self) -> "HostServer":
        self.sshd.start()
        return self

    def stop(self) -> None:
        self.sshd.stop()

    def __enter__(self) -> "HostServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.own_workdir and not os.environ.get("COLDCLONE_VM_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def port(self) -> int:
        return self.sshd.port

    @property
    def fingerprint(self) -> str:
        return self.sshd.fingerprint

    @property
    def identity(self) -> str:
        return self.sshd.client_key

    @property
    def receiver_root(self) -> str:
        return self.sshd.receiver_root

    def new_dir(self, name: str) -> str:
        """A fresh directory in the receiver's confined root, owned by the receiving user."""
        d = os.path.join(self.receiver_root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.chown(d, self.sshd.user)
        return d

    def url(self, path: str = "/", port: int | None = None) -> str:
        return f"ssh://{self.sshd.user}@{HOST_FROM_GUEST}:{port or self.port}{path}"

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.sshd.p("sshd.log"), errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- QEMU pieces
def fwcfg_file(name: str, path: str) -> tuple[list[str], str]:
    """QEMU args handing ``path`` to the guest, and where the guest reads it."""
    if "," in path:
        raise ValueError(f"{path}: QEMU option values must not hold commas")
    return ["-fw_cfg", f"name=opt/coldclone/{name},file={path}"], f"{FWCFG_DIR}/{name}/raw"


@dataclass
class SourceDisk:
    """A raw image file the guest sees as a disk; ``serial`` identifies it in the inventory."""

    image: str
    serial: str
    bus: str = "virtio"           # virtio | ahci | megasas | usb-ehci | usb-xhci | two-hbas
    sha256: str = ""
    layout: synthdisk.SynthDisk | None = None
    wwn: str = ""                 # the WWN a SCSI disk reports (two-hbas needs one)

    def seal(self) -> "SourceDisk":
        self.sha256 = sha256_of(self.image)
        return self


def disk_args(disks: list[SourceDisk]) -> list[str]:
    """QEMU arguments attaching ``disks`` with their controllers (one of each kind at most)."""
    args: list[str] = []
    have: set[str] = set()
    ahci_ports = 0
    for i, d in enumerate(disks):
        drive = ["-drive", f"file={d.image},format=raw,if=none,id=src{i},cache=unsafe"]
        if d.bus == "virtio":
            args += drive + ["-device", f"virtio-blk-pci,drive=src{i},serial={d.serial}"]
        elif d.bus == "ahci":
            # a SATA disk as most servers have it: the live system names it /dev/sdX
            if "ahci" not in have:
                args += ["-device", "ahci,id=ahci"]
                have.add("ahci")
            args += drive + ["-device", f"ide-hd,bus=ahci.{ahci_ports},drive=src{i},serial={d.serial}"]
            ahci_ports += 1
        elif d.bus == "megasas":
            if "megasas" not in have:
                args += ["-device", "megasas-gen2,id=raid"]
                have.add("megasas")
            args += drive + ["-device", f"scsi-hd,drive=src{i},bus=raid.0,serial={d.serial}"]
        elif d.bus == "usb-ehci":
            if "ehci" not in have:
                args += ["-device", "usb-ehci,id=ehci"]
                have.add("ehci")
            args += drive + ["-device", f"usb-storage,bus=ehci.0,drive=src{i},serial={d.serial}"]
        elif d.bus == "usb-xhci":
            if "xhci" not in have:
                args += ["-device", "qemu-xhci,id=ccxhci"]
                have.add("xhci")
            args += drive + ["-device", f"usb-storage,bus=ccxhci.0,drive=src{i},serial={d.serial}"]
        elif d.bus == "two-hbas":
            # One LUN through two HBAs, as a dual-pathed SAN LUN looks to a live system that
            # runs no multipathd: the same image behind two virtio-scsi controllers, with the
            # same serial and WWN; share-rw and no file locking let QEMU open it twice.
            if not d.wwn:
                raise ValueError(f"{d.image}: a disk on two HBAs needs a wwn")
            for hba in ("hba1", "hba2"):
                if hba not in have:
                    args += ["-device", f"virtio-scsi-pci,id={hba}"]
                    have.add(hba)
                args += ["-drive", f"file={d.image},format=raw,if=none,id=src{i}{hba},"
                                   f"cache=unsafe,file.locking=off",
                         "-device", f"scsi-hd,drive=src{i}{hba},bus={hba}.0,serial={d.serial},"
                                    f"wwn={d.wwn},share-rw=on"]
        else:
            raise ValueError(f"unknown bus {d.bus!r}")
    return args


def os_disk(path: str, serial: str = "cc-os", table: str = "gpt", size_mb: int = 512,
            files_mb: int = 48, remnant_mb: int = 16, bus: str = "virtio") -> SourceDisk:
    """A source server disk: partition table, /boot ext4, swap, / ext4 with files and fstab."""
    sd = synthdisk.build(path, size=size_mb * MiB, table=table, files_mb=files_mb, remnant_mb=remnant_mb)
    return SourceDisk(path, serial, bus=bus, layout=sd).seal()


def blank_disk(path: str, serial: str, size_mb: int = 64, bus: str = "virtio") -> SourceDisk:
    with open(path, "wb") as f:
        f.truncate(size_mb * MiB)
    return SourceDisk(path, serial, bus=bus).seal()


def pattern_disk(path: str, serial: str, size_mb: int = 32, bus: str = "virtio") -> SourceDisk:
    """A small disk with recognisable non-zero data every 4 MiB, zeros between (no loop device)."""
    with open(path, "wb") as f:
        f.truncate(size_mb * MiB)
        for i in range(0, size_mb, 4):
            f.seek(i * MiB)
            f.write((f"{serial}:{i:06d}:".encode() * 512)[:64 * 1024])
    return SourceDisk(path, serial, bus=bus).seal()


def random_disk(path: str, serial: str, size_mb: int, bus: str = "virtio") -> SourceDisk:
    """A disk of incompressible random bytes: every byte is DATA (no zeros skipped, nothing
    compressed), so the bytes sent are exact and a capture lasts long enough to cut half way."""
    synthdisk._random_file(path, size_mb * MiB)
    return SourceDisk(path, serial, bus=bus).seal()


# --------------------------------------------------------------------------- the console
@dataclass
class Console:
    """What `coldclone headless` said on the serial console."""

    text: str
    lines: list[str] = field(default_factory=list)          # the `coldclone: ` lines
    inventory: dict | None = None
    estimate: dict | None = None
    inventory_problem: str = ""       # why ``inventory`` is None
    estimate_problem: str = ""
    ok: bool = False
    capture_id: str | None = None
    failed: bool = False
    exit_code: int | None = None
    message: str = ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.text.splitlines()[-n:])

    def excerpt(self, needle: str, before: int = 5, after: int = 15) -> str:
        ls = self.text.splitlines()
        for i, line in enumerate(ls):
            if needle in line:
                return "\n".join(ls[max(0, i - before): i + after])
        return self.tail()


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)   # terminal escapes of getty/systemd


def _json_block(lines: list[str], begin: str, end: str) -> tuple[dict | None, str]:
    """The JSON between the marker lines, or why not; kernel lines that cut into it are dropped."""
    try:
        i = next(k for k, l in enumerate(lines) if l.strip().endswith(begin))
    except StopIteration:
        return None, f"no {begin} line on the console"
    try:
        j = next(k for k in range(i + 1, len(lines)) if end in lines[k])
    except StopIteration:
        return None, f"{begin} without {end} on the console"
    body = lines[i + 1:j]
    for attempt in (body, [l for l in body if not _KERNEL_LINE.match(l)]):
        try:
            return json.loads("\n".join(attempt)), ""
        except ValueError:
            continue
    return None, f"the JSON between {begin} and {end} does not parse:\n" + "\n".join(body)[:3000]


def parse_console(text: str) -> Console:
    text = _clean(text)
    lines = text.splitlines()
    c = Console(text=text)
    c.lines = [l.strip() for l in lines if l.strip().startswith("coldclone: ")]
    c.inventory, c.inventory_problem = _json_block(lines, INVENTORY_BEGIN, INVENTORY_END)
    c.estimate, c.estimate_problem = _json_block(lines, ESTIMATE_BEGIN, ESTIMATE_END)
    for l in lines:
        s = l.strip()
        m = re.search(OK_LINE + r"\s+capture_id=(\S+)", s)
        if m:
            c.ok, c.capture_id = True, m.group(1)
        m = re.search(FAILED_LINE + r"\s+exit=(\d+):?\s*(.*)", s)
        if m and not c.failed:
            c.failed, c.exit_code, c.message = True, int(m.group(1)), m.group(2)
    return c


# --------------------------------------------------------------------------- one run
@dataclass
class Run:
    """One boot of the ISO: QEMU's result, the parsed console and the times that matter."""

    boot: vmboot.BootResult
    console: Console
    boot_seconds: float | None        # QEMU start -> the headless runner starts
    done_seconds: float | None        # QEMU start -> OK / FAILED line
    capture_seconds: float | None     # runner start -> OK / FAILED line (hooks, discovery, capture)
    smoke_marker: str = ""            # the coldclone.smoke= marker this boot carried
    shell: "LiveShell | None" = None  # boot_headless(shell=True): the root shell it left, live

    @property
    def smoke_line(self) -> str | None:
        """The image's smoke line of this boot (``COLDCLONE-SMOKE-OK marker=...``), if printed."""
        want = f"{SMOKE_LINE} marker={self.smoke_marker} "
        return next((l[l.index(SMOKE_LINE):].strip() for l in self.console.text.splitlines() if want in l),
                    None)

    def times(self) -> str:
        f = lambda v: f"{v:.1f} s" if v is not None else "n/a"  # noqa: E731
        off = f"{self.boot.exit_seconds:.1f} s" if self.boot.exited else "no"
        if self.boot.stopped_seconds is not None:
            off += f", killed by the test at {self.boot.stopped_seconds:.1f} s"
        return (f"[{self.boot.mode}/{self.boot.accel}] boot {f(self.boot_seconds)}, headless run "
                f"{f(self.capture_seconds)} (OK/FAILED at {f(self.done_seconds)}), "
                f"QEMU exited by itself: {off}; serial log {self.boot.log_path}")

    def explain(self, n: int = 60) -> str:
        return f"{self.times()}\n--- console tail ---\n{self.console.tail(n)}"


def headless_cmdline(server: HostServer, path: str, capture_id: str | None, identity_path: str,
                     extra: str = "") -> str:
    """``capture_id`` None: none on the command line, the agent makes one up (a new one on
    every boot, as on a fleet's shared PXE entry)."""
    words = [f"coldclone.server={server.url(path)}",
             f"coldclone.identity={identity_path}",
             f"coldclone.hostkey={server.fingerprint}"]
    if capture_id is not None:
        words.append(f"coldclone.capture_id={capture_id}")
    words.append("coldclone.progress=5")
    return " ".join(words + ([extra] if extra else []))


def boot_headless(mode: str, cmdline: str, *, extra_args: list[str] | None = None,
                  timeout: float = 480, name: str | None = None, log_dir: str | None = None,
                  expect_failure: bool = False, memory_mib: int = 2048,
                  stop_when: Callable[[], bool] | None = None, shell: bool = False,
                  nic: list[str] | None = None) -> Run:
    """Boot the ISO with ``cmdline`` appended; wait for the guest to power off by itself.

    A FAILED line ends the boot once the rescue shell's prompt appears (or 45 s after it at
    the latest): a failed run does not power off, it leaves a root shell.
    ``stop_when``: the host's test for a power cut; QEMU is killed when it says yes
    (vmboot.boot). ``nic``: the source server's NIC instead of QEMU's default (vmboot.qemu_argv).
    ``shell``: the run leaves a root shell (it fails, or ``coldclone.on_done=shell``): the boot
    ends at its prompt and QEMU keeps running; ``Run.shell`` types into it (liveshell.py), and
    the test closes it.
    """
    marker = uuid.uuid4().hex[:12]
    cmdline = f"{cmdline} coldclone.smoke={marker} coldclone.smoke_done=shell"
    to_prompt = expect_failure or shell
    res = vmboot.boot_any_accel(mode, cmdline, expect=(ROOT_PROMPT if to_prompt else OK_LINE),
                                timeout=timeout, log_dir=log_dir,
                                until_exit=not to_prompt, extra_args=extra_args,
                                memory_mib=memory_mib, name=name,
                                marks=(STARTING_LINE, OK_LINE, FAILED_LINE, ROOT_PROMPT),
                                abort_on=(() if to_prompt else (FAILED_LINE,)),
                                abort_grace=45 if not to_prompt else 0, stop_when=stop_when,
                                keep=shell, nic=nic)
    con = parse_console(res.console)
    ms = res.mark_seconds
    start = ms.get(STARTING_LINE)
    done = ms.get(OK_LINE, ms.get(FAILED_LINE))
    return Run(boot=res, console=con, boot_seconds=start, done_seconds=done,
               capture_seconds=(done - start) if (start is not None and done is not None) else None,
               smoke_marker=marker, shell=LiveShell(res) if shell and res.proc else None)


def assert_boot_path(run: Run, mode: str) -> str:
    """What a smoke boot (vmboot.smoke) proves, from a capture boot of that path: the
    firmware booted the ISO that way, the agent's venv imports in the image, DHCP configured
    the NIC, and (for a capture) QEMU powered off by itself. Returns the smoke line."""
    line = run.smoke_line
    assert line, f"no smoke line (marker {run.smoke_marker}) on the serial console:\n{run.explain()}"
    assert "agent=ok" in line, f"the agent venv does not import in the image: {line}"
    assert "net=none" not in line, f"no DHCP address at boot: {line}"
    fw = "uefi" if mode.startswith("uefi") else "bios"
    assert f"firmware={fw}" in line, line
    assert run.boot.mode == mode, f"booted as {run.boot.mode}, not {mode}"
    return line


# --------------------------------------------------------------------------- verdicts
def manifest(receiver_dir: str, capture_id: str) -> dict:
    with open(os.path.join(receiver_dir, capture_id, "manifest.json")) as f:
        return json.load(f)


def manifest_disk(m: dict, name: str) -> dict:
    for d in m["disks"]:
        if d["name"] == name:
            return d
    raise AssertionError(f"disk {name} not in the manifest (has {[d['name'] for d in m['disks']]})")


def qemu_img_compare(raw: str, qcow2: str) -> None:
    """Raises CommandError (with qemu-img's words) unless the images hold the same bytes."""
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, qcow2])


def inventory_disk_by_serial(inv: dict, serial: str) -> dict:
    # A by-id name holds the serial as a whole word (virtio-SERIAL, usb-QEMU_QEMU_HARDDISK_SERIAL-0:0),
    # not as the start of another disk's (cc-lvm of virtio-cc-lvmboot).
    word = re.compile(r"(^|[-_])" + re.escape(serial) + r"($|[-_:])")
    for d in inv.get("disks", []):
        if d.get("serial") == serial or any(word.search(os.path.basename(b)) for b in d.get("by_id") or []):
            return d
    raise AssertionError(f"no disk with serial {serial} in the inventory: "
                         f"{[(d.get('name'), d.get('serial')) for d in inv.get('disks', [])]}")


def controller_of(inv: dict, disk: dict) -> dict | None:
    for c in inv.get("controllers", []):
        if c.get("id") == disk.get("controller"):
            return c
    return None
