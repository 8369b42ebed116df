"""Boot the coldclone live ISO in QEMU and watch its serial console.

Used by tests/vm (guest.py) and by livecd/boot-smoke.sh (``python3 tests/vm/vmboot.py``).
Standard library only, so it runs with the system python3 as well as the project venv.

Boot paths (``mode``):
  kernel     QEMU -kernel/-initrd/-append with livecd/build/{vmlinuz,initrd.img} and the ISO
             as a CD-ROM (live-boot finds the squashfs there). Any kernel command line.
  bios       SeaBIOS -> ISO El Torito -> isolinux -> default menu entry.
  uefi       OVMF -> ISO El Torito EFI image -> GRUB EFI -> default menu entry.
  bios-usb   the ISO as a raw USB stick: SeaBIOS -> isohybrid MBR -> isolinux.
  uefi-usb   the ISO as a raw USB stick: OVMF -> GPT EFI partition -> GRUB EFI.
  disk       no ISO: SeaBIOS boots the first disk of ``extra_args`` (a converted guest), with
             the same virtio-net NIC on QEMU's user network.
  uefi-disk  the same with OVMF on q35, as a new cloud instance starts: the firmware code
             read-only and a fresh copy of OVMF's empty NVRAM variables (no boot entries), so
             only the disk's removable-media loader (EFI/BOOT/BOOTX64.EFI) can boot.
For the last four the boot menu is left alone; the extra words reach the live system through
QEMU's fw_cfg (``-fw_cfg name=opt/coldclone/cmdline,string=...``), which the image's
coldclone-fwcfg.service appends to /proc/cmdline (see docs/livecd.md).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("COLDCLONE_BUILD", os.path.join(REPO, "livecd", "build"))
ISO = os.path.join(BUILD, "coldclone.iso")
VMLINUZ = os.path.join(BUILD, "vmlinuz")
INITRD = os.path.join(BUILD, "initrd.img")
QEMU = "qemu-system-x86_64"
# the default entry of both boot menus (keep in sync with livecd/build.sh CMDLINE)
BASE_CMDLINE = "boot=live components quiet console=tty0 console=ttyS0,115200"
OVMF_CANDIDATES = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd",
                   "/usr/share/OVMF/OVMF.fd")
# split firmware: read-only code + a variables store (the NVRAM) of the instance's own
OVMF_SPLIT = (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
              ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"))
# QEMU's default NIC for every boot unless the caller gives its own (`nic=`)
DEFAULT_NIC = ["-nic", "user,model=virtio-net-pci"]
MODES = ("kernel", "bios", "uefi", "bios-usb", "uefi-usb")   # boots of the ISO (not "disk")
SMOKE_LINE = "COLDCLONE-SMOKE-OK"


def ovmf_path() -> str | None:
    for p in OVMF_CANDIDATES:
        if os.path.exists(p):
            return p
    return None


def ovmf_split() -> tuple[str, str] | None:
    return next(((c, v) for c, v in OVMF_SPLIT if os.path.exists(c) and os.path.exists(v)), None)


def missing_prerequisites(mode: str) -> str | None:
    """Why this boot cannot run here (for pytest.skip), or None."""
    if not os.path.exists(ISO):
        return f"live ISO not built ({ISO}); build it with: sudo livecd/build.sh (make iso)"
    if mode == "kernel" and not (os.path.exists(VMLINUZ) and os.path.exists(INITRD)):
        return f"{VMLINUZ} / {INITRD} missing; rebuild with livecd/build.sh"
    if not shutil.which(QEMU):
        return f"{QEMU} not installed (apt-get install qemu-system-x86)"
    if mode.startswith("uefi") and not ovmf_path():
        return "OVMF firmware not installed (apt-get install ovmf)"
    if mode == "uefi-disk" and not ovmf_split():
        return f"OVMF's split firmware (code + variables) not installed: none of {OVMF_SPLIT}"
    return None


_accel_cache: str | None = None


def pick_accel() -> str:
    """'kvm' if /dev/kvm really runs a guest here, else 'tcg'. COLDCLONE_VM_ACCEL overrides."""
    global _accel_cache
    forced = os.environ.get("COLDCLONE_VM_ACCEL")
    if forced:
        return forced
    if _accel_cache:
        return _accel_cache
    _accel_cache = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK) and shutil.which(QEMU):
        # SeaBIOS writes its banner to the debug port within milliseconds when the vCPU runs
        with tempfile.TemporaryDirectory() as d:
            dbg = os.path.join(d, "debugcon")
            try:
                p = subprocess.Popen(
                    # -cpu host as in the real boots: here KVM starts SeaBIOS without it but
                    # the host CPU model aborts ("failed to set MSR 0x10a")
                    [QEMU, "-accel", "kvm", "-cpu", "host", "-display", "none", "-nodefaults", "-m", "64",
                     "-no-reboot", "-chardev", f"file,id=dbg,path={dbg}",
                     "-device", "isa-debugcon,iobase=0x402,chardev=dbg"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError:
                return _accel_cache
            deadline = time.monotonic() + 5
            ok = False
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    with open(dbg, "rb") as f:
                        if b"SeaBIOS" in f.read():
                            ok = True
                            break
                except FileNotFoundError:
                    pass
                time.sleep(0.1)
            if p.poll() is None:
                p.kill()
            p.wait()
            if ok:
                _accel_cache = "kvm"
    return _accel_cache


@dataclass
class BootResult:
    mode: str
    accel: str
    argv: list[str]
    log_path: str
    found: bool = False
    found_line: str = ""
    marker_seconds: float | None = None
    exited: bool = False
    exit_code: int | None = None
    exit_seconds: float | None = None
    console: str = field(default="", repr=False)
    # seconds after QEMU started at which each ``marks`` string first appeared on the console
    mark_seconds: dict[str, float] = field(default_factory=dict)
    aborted_on: str | None = None     # the ``abort_on`` string that ended the boot early
    # seconds after QEMU started at which ``stop_when`` said yes and QEMU was killed (a power cut)
    stopped_seconds: float | None = None
    timed_out: bool = False
    serial_socket: str | None = None  # boot(keep=True): the console's unix socket
    proc: subprocess.Popen | None = field(default=None, repr=False)   # boot(keep=True): still running

    def summary(self) -> str:
        m = f"{self.marker_seconds:.1f}s" if self.marker_seconds is not None else "never"
        e = f"{self.exit_seconds:.1f}s (rc {self.exit_code})" if self.exited else "no (killed)"
        return (f"[{self.mode}/{self.accel}] marker: {m}; QEMU exited by itself: {e}; "
                f"serial log: {self.log_path}")


def qemu_argv(mode: str, extra_cmdline: str, serial_log: str, accel: str,
              memory_mib: int = 2048, extra_args: list[str] | None = None,
              serial_socket: str | None = None, nic: list[str] | None = None, cpus: int = 2) -> list[str]:
    """``cpus``: the guest's vCPUs; ``extra_args``: more QEMU arguments (source disks,
    controllers, USB buses); ``nic``: the NIC's arguments instead of the default virtio-net on
    the user network (e.g. an e1000 with the source server's MAC, or a virtio-net with a new MAC
    in another PCI slot).
    ``serial_socket``: the serial console is also a unix socket the test can type into (a
    root shell the boot leaves there, see tests/vm/liveshell.py); the log file still gets
    every byte."""
    if serial_socket:
        serial = ["-chardev", f"socket,id=ser0,path={serial_socket},server=on,wait=off,"
                              f"logfile={serial_log},logappend=off", "-serial", "chardev:ser0"]
    else:
        serial = ["-serial", f"file:{serial_log}"]
    argv = [QEMU, "-accel", accel, "-m", str(memory_mib), "-smp", str(cpus),
            "-display", "none", "-vga", "std", "-monitor", "none",
            *serial, "-no-reboot", *(nic or DEFAULT_NIC)]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if mode == "uefi-disk":
        code, template = ovmf_split()
        nvram = serial_log + ".OVMF_VARS.fd"
        shutil.copyfile(template, nvram)          # a new instance: an empty NVRAM of its own
        argv += ["-machine", "q35", "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={nvram}"]
    elif mode.startswith("uefi"):
        argv += ["-machine", "q35", "-bios", ovmf_path()]
    fwcfg = ["-fw_cfg", "name=opt/coldclone/cmdline,string=" + extra_cmdline.replace(",", ",,")]
    cdrom = ["-drive", f"file={ISO},media=cdrom,readonly=on,if=ide,index=2"]
    usb = ["-device", "qemu-xhci,id=xhci",
           "-drive", f"if=none,id=stick,format=raw,readonly=on,file={ISO}",
           "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]
    if mode == "kernel":
        argv += ["-kernel", VMLINUZ, "-initrd", INITRD,
                 "-append", f"{BASE_CMDLINE} {extra_cmdline}".strip()] + cdrom
    elif mode in ("bios", "uefi"):
        argv += cdrom + ["-boot", "d"] + fwcfg
    elif mode in ("bios-usb", "uefi-usb"):
        argv += usb + fwcfg
    elif mode in ("disk", "uefi-disk"):
        pass            # the disk and its controller come in extra_args
    else:
        raise ValueError(f"unknown boot mode {mode!r} (one of {', '.join(MODES)})")
    return argv + list(extra_args or [])


def boot(mode: str, extra_cmdline: str = "", expect: str | None = None, timeout: float = 240,
         log_dir: str | None = None, accel: str | None = None,
         until_exit: bool = True, extra_args: list[str] | None = None,
         memory_mib: int = 2048, name: str | None = None,
         marks: tuple[str, ...] = (), abort_on: tuple[str, ...] = (),
         abort_grace: float = 0.0, stop_when: Callable[[], bool] | None = None,
         keep: bool = False, nic: list[str] | None = None, cpus: int = 2) -> BootResult:
    """Boot, wait for ``expect`` on the serial console and for QEMU to exit by itself.

    ``keep``: the serial console is also a unix socket, and once ``expect`` appeared QEMU is
    left running (``BootResult.proc``, ``BootResult.serial_socket``): the test goes on in the
    shell the boot left there (tests/vm/liveshell.py) and stops QEMU itself.

    With ``until_exit=False`` QEMU is killed as soon as ``expect`` appeared (for boots that do
    not power off). QEMU is killed after ``timeout`` seconds at the latest.
    ``marks``: console strings whose first appearance is timed (``BootResult.mark_seconds``).
    ``abort_on``: console strings that end the boot early (a failure that will not power off),
    ``abort_grace`` seconds after they appear, so what follows them reaches the log.
    ``stop_when``: asked at every poll (4 times a second); when it says yes QEMU is killed at
    once with SIGKILL, as a power cut stops a server mid-work (e.g. when the host sees half of
    a capture arrive); ``BootResult.stopped_seconds`` says when.
    """
    accel = accel or pick_accel()
    log_dir = log_dir or tempfile.mkdtemp(prefix="coldclone-vm-")
    os.makedirs(log_dir, exist_ok=True)
    serial_log = os.path.join(log_dir, f"serial-{name or mode}.log")
    open(serial_log, "wb").close()
    sock = os.path.join(tempfile.mkdtemp(prefix="cc-serial-"), "ttyS0") if keep else None
    argv = qemu_argv(mode, extra_cmdline, serial_log, accel, memory_mib=memory_mib, extra_args=extra_args,
                     serial_socket=sock, nic=nic, cpus=cpus)
    res = BootResult(mode=mode, accel=accel, argv=argv, log_path=serial_log, serial_socket=sock)
    stderr_path = os.path.join(log_dir, f"qemu-{name or mode}-{accel}.stderr")
    t0 = time.monotonic()
    abort_at: float | None = None
    with open(stderr_path, "wb") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            while True:
                rc = p.poll()
                now = time.monotonic() - t0
                if (expect and not res.found) or marks or abort_on:
                    with open(serial_log, "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                    if expect and not res.found:
                        for line in text.splitlines():
                            if expect in line:
                                res.found, res.found_line, res.marker_seconds = True, line.strip(), now
                                break
                    for m in marks:
                        if m not in res.mark_seconds and m in text:
                            res.mark_seconds[m] = now
                    if abort_at is None:
                        for a in abort_on:
                            if a in text:
                                res.aborted_on, abort_at = a, now + abort_grace
                                break
                if rc is not None:
                    res.exited, res.exit_code, res.exit_seconds = True, rc, now
                    break
                if res.found and not until_exit:
                    break
                if abort_at is not None and now >= abort_at:
                    break
                if stop_when is not None and stop_when():
                    res.stopped_seconds = now
                    break
                if now > timeout:
                    res.timed_out = True
                    break
                time.sleep(0.25)
        finally:
            if keep and res.found and p.poll() is None:
                res.proc = p
            elif p.poll() is None:
                p.kill()
                p.wait()
    with open(serial_log, "rb") as f:
        res.console = f.read().decode("utf-8", "replace")
    if expect and not res.found and expect in res.console:
        res.found = True
        res.found_line = next(l for l in res.console.splitlines() if expect in l).strip()
        res.marker_seconds = res.exit_seconds
    with open(stderr_path, "rb") as f:
        qerr = f.read().decode("utf-8", "replace").strip()
    if qerr:
        res.console += f"\n--- qemu stderr ---\n{qerr}\n"
    return res


def boot_any_accel(mode: str, extra_cmdline: str = "", **kw) -> BootResult:
    """boot() with the best accelerator: KVM when it works, else TCG. A /dev/kvm that opens
    but cannot run this guest makes QEMU give up within seconds: then TCG, for the rest of
    the session. COLDCLONE_VM_ACCEL pins the choice (no fallback)."""
    global _accel_cache
    accel = pick_accel()
    res = boot(mode, extra_cmdline, accel=accel, **kw)
    if (accel == "kvm" and not os.environ.get("COLDCLONE_VM_ACCEL") and not res.found
            and res.exited and (res.exit_seconds or 0) < 15):
        _accel_cache = "tcg"
        res = boot(mode, extra_cmdline, accel="tcg", **kw)
    return res


def smoke(mode: str, timeout: float = 240, log_dir: str | None = None,
          accel: str | None = None) -> BootResult:
    """Boot with coldclone.smoke=<random marker>: the image prints a marker line and powers off."""
    global _accel_cache
    marker = uuid.uuid4().hex[:12]
    args = (mode, f"coldclone.smoke={marker}")
    expect = f"{SMOKE_LINE} marker={marker}"
    chosen = accel or pick_accel()
    if chosen == "kvm" and not accel and not os.environ.get("COLDCLONE_VM_ACCEL"):
        # /dev/kvm may start a guest and still not boot it: a KVM boot takes seconds, so give
        # it a shorter leash and fall back to TCG (for the rest of the session) if it fails
        res = boot(*args, expect=expect, timeout=min(timeout, 90), log_dir=log_dir, accel="kvm")
        if res.found and res.exited:
            return res
        print(f"[{mode}] KVM boot failed ({res.summary()}); retrying with TCG", file=sys.stderr)
        _accel_cache = chosen = "tcg"
    return boot(*args, expect=expect, timeout=timeout, log_dir=log_dir, accel=chosen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Smoke-boot the coldclone live ISO in QEMU.")
    ap.add_argument("modes", nargs="*", default=["kernel", "bios", "uefi"],
                    help=f"boot paths to try: {', '.join(MODES)} or 'all' (default: kernel bios uefi)")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("COLDCLONE_VM_TIMEOUT", 240)))
    ap.add_argument("--accel", choices=("kvm", "tcg"), help="default: kvm if it works, else tcg")
    ap.add_argument("--log-dir", default=os.path.join(BUILD, "vm-logs"))
    ap.add_argument("--print-argv", action="store_true", help="print the QEMU command lines")
    a = ap.parse_args(argv)
    modes = list(MODES) if a.modes == ["all"] else a.modes
    failed = 0
    for mode in modes:
        why = missing_prerequisites(mode)
        if why:
            print(f"[{mode}] SKIP: {why}")
            continue
        res = smoke(mode, timeout=a.timeout, log_dir=a.log_dir, accel=a.accel)
        if a.print_argv:
            print("  " + " ".join(res.argv))
        ok = res.found and res.exited and res.exit_code == 0
        print(("PASS " if ok else "FAIL ") + res.summary())
        if res.found:
            print("  " + res.found_line)
        else:
            print("  last console lines:\n    " + "\n    ".join(res.console.splitlines()[-25:]))
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
