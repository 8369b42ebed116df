"""`make demo` with the real thing: the live ISO boots in QEMU on a synthetic source server.

The source server's disk (GPT: /boot ext4, swap, / ext4 with real files, /etc/fstab and
deleted-file remnants) is a raw image attached as a virtio disk. The ISO boots through its
own boot menu (BIOS/isolinux or UEFI/GRUB), and `coldclone headless` captures the disk to a
local conversion server: a throwaway sshd on 127.0.0.1 (the guest's 10.0.2.2) whose key runs
coldclone-receive as a forced command, host key pinned on the kernel command line, the
agent's key handed to the guest through QEMU's fw_cfg. The guest powers off by itself; the
demo prints the estimate the agent made, the throughput, and verifies the qcow2 against the
source image with qemu-img compare.

    python -m tests.testbed.vmdemo [--mode bios|uefi] [--size-mb N] [--files-mb N]

Needs root, the built ISO (make iso), qemu-system-x86_64 and qemu-img. Falls back to the
loop-device demo (tests.testbed.demo) when there is no ISO.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time

from agent.units import human_bytes as hb
from tests.vm import guest, vmboot

from . import demo
from .demo import say

MiB = 1 << 20


class ConsoleTail(threading.Thread):
    """Echo the guest's coldclone lines from the serial log while QEMU runs."""

    SHOW = ("coldclone: ", "disk ", "capture ", "  where", "  read", "  wire", "COLDCLONE-HEADLESS")

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.in_json = False

    def run(self) -> None:
        pos = 0
        buf = ""
        while not self.stop.is_set():
            try:
                if os.path.getsize(self.path) < pos:
                    pos, buf = 0, ""      # a new boot attempt (KVM -> TCG fallback) restarted the log
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
            except OSError:
                chunk = b""
            buf += chunk.decode("utf-8", "replace").replace("\r", "")
            *lines, buf = buf.split("\n")
            for line in lines:
                self.show(line)
            self.stop.wait(0.5)

    def show(self, line: str) -> None:
        if "-JSON-BEGIN" in line:
            self.in_json = True
        if not self.in_json and (line.startswith(self.SHOW) or ("%" in line and "read" in line)):
            say("  | " + line)
        if "-JSON-END" in line:
            self.in_json = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-vmdemo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["bios", "uefi"], default="bios", help="firmware to boot the ISO with")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the whole VM run")
    demo.add_source_args(ap, size_mb=1024, files_mb=150, remnant_mb=32, out="/var/tmp/coldclone-vmdemo")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        say("the VM demo needs root (loop devices to build the source disk, a throwaway sshd): run it as root")
        return 2
    host_demo = ["--size-mb", str(args.size_mb), "--files-mb", str(args.files_mb),
                 "--remnant-mb", str(args.remnant_mb), "--table", args.table, "--out", args.out]
    why = vmboot.missing_prerequisites(args.mode)
    if why:
        say(f"no VM demo: {why}\n-> running the loop-device demo instead\n")
        return demo.main(host_demo)
    work, receiver_root = demo.workspace(args.out, "coldclone-vmdemo-")
    try:
        say("== coldclone VM demo: the live ISO in QEMU captures a synthetic server headless ==")
        t = time.monotonic()
        src = guest.os_disk(os.path.join(work, "source-server.img"), serial="demo-server",
                            table=args.table, size_mb=args.size_mb, files_mb=args.files_mb,
                            remnant_mb=args.remnant_mb)
        sd = src.layout
        say(f"{demo.describe_source(sd, time.monotonic() - t)}, sha256 {src.sha256[:16]}...")
        with guest.HostServer(workdir=os.path.join(work, "server"), receiver_root=receiver_root) as srv:
            os.chmod(receiver_root, 0o755)
            capture_id = "vmdemo-" + time.strftime("%Y%m%dT%H%M%S")
            fw, identity = guest.fwcfg_file("identity", srv.identity)
            cmdline = guest.headless_cmdline(srv, "/", capture_id, identity)
            say(f"conversion server: sshd on 127.0.0.1:{srv.port} (guest: {guest.HOST_FROM_GUEST}), key forced "
                f"to coldclone-receive --root {receiver_root}, host key {srv.fingerprint}")
            say(f"kernel command line (via fw_cfg): {cmdline}")
            say(f"booting {vmboot.ISO} ({args.mode}; without KVM, TCG takes a minute or two to boot)...")
            log_dir = os.path.join(work, "logs")
            os.makedirs(log_dir, exist_ok=True)
            tail = ConsoleTail(os.path.join(log_dir, "serial-vmdemo.log"))
            tail.start()
            try:
                run = guest.boot_headless(args.mode, cmdline, extra_args=fw + guest.disk_args([src]),
                                          timeout=args.timeout, name="vmdemo", log_dir=log_dir)
            finally:
                tail.stop.set()
                tail.join(2)
            con = run.console
            say("")
            say(run.times().split("; serial log")[0])
            if not con.ok:
                shutil.copy(run.boot.log_path, os.path.join(args.out, "serial-vmdemo.log"))
                if con.failed:
                    say(f"the headless capture failed (exit {con.exit_code}): {con.message}")
                else:
                    say("the VM run ended without a result line (timeout, or QEMU stopped)")
                say(f"serial console log: {os.path.join(args.out, 'serial-vmdemo.log')}")
                say(con.tail(30))
                return con.exit_code or 1
            m = guest.manifest(receiver_root, capture_id)
            disk = m["disks"][0]
            qcow2 = os.path.join(receiver_root, capture_id, disk["image"])
            say("\n-- the agent's estimate (from the serial console) --")
            est = con.estimate
            if est:
                say(f"downtime ~{est['total_seconds']:.0f} s, {est['bottleneck']}; "
                    f"~{hb(est['bytes_to_send'])} to send of {hb(est['total_size'])}"
                    + (" (calibrated)" if est.get("calibrated") else ""))
            else:
                say("(no COLDCLONE-ESTIMATE-JSON block on the console: this ISO's agent printed no estimate)")
            say("\n-- verification (independent of the receiver's own checks) --")
            guest.qemu_img_compare(src.image, qcow2)
            say(f"qemu-img compare {src.image} {qcow2}: images are identical")
            same = guest.sha256_of(src.image) == src.sha256
            say(f"source sha256 before and after the VM run: {src.sha256[:16]}... "
                f"({'unchanged' if same else 'CHANGED!'})")
            if not same:
                return 1
            say("\n-- figures --")
            took = run.capture_seconds or 0
            wire = m["totals"]["stream_bytes"]
            say(f"boot to the headless runner: {run.boot_seconds:.0f} s; headless run (discovery, "
                f"estimate, capture, verification): {took:.0f} s")
            cap_s = m["receive_seconds"]      # the capture itself: connect to verified qcow2
            if est:
                say(f"capture: estimated {est['total_seconds']:.0f} s, took {cap_s:.0f} s")
            if cap_s:
                say(f"throughput: {sd.size / cap_s / 1e6:.0f} MB/s of disk captured, "
                    f"{wire / cap_s / 1e6:.1f} MB/s on the wire ({hb(wire)} = "
                    f"{100 * wire / sd.size:.1f}% of the disk; zero blocks are never sent)")
            demo.say_where(qcow2, os.path.join(receiver_root, capture_id))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
