"""The root shell a booted live ISO leaves on its serial console, driven by the test.

A failed headless run (coldclone-rescue.service) and `coldclone.on_done=shell` both leave a
root autologin shell on ttyS0. A test that boots with ``vmboot.boot(keep=True)`` can go on in
that shell instead of booting again: every further `coldclone headless --cmdline ...` runs in
the same live system, as an operator at that console would run it. Under TCG a boot costs
about a minute of the 2-core machine; a command costs what it does.

Each command's end is a marker line with its exit status; the marker is split by quotes in
what is typed, so the tty's echo of the command can never be mistaken for it.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import time
import uuid

try:
    from . import vmboot
except ImportError:  # run as a plain module
    import vmboot  # type: ignore[no-redef]

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ShellError(AssertionError):
    pass


class LiveShell:
    """Commands in the root shell on a running guest's serial console."""

    def __init__(self, boot: vmboot.BootResult):
        if boot.proc is None or not boot.serial_socket:
            raise ShellError(f"the boot is not running with a serial socket: {boot.summary()}")
        self.boot = boot
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(boot.serial_socket)
        self.sock.settimeout(0.5)
        # No kernel messages on this console, no line editing, no echo of what we type: the
        # output is what the commands print.
        self.run("dmesg -n 1; set +o emacs +o vi; stty -echo cols 500; PS1=; PS2=", timeout=60)

    def _read_until(self, pattern: re.Pattern, timeout: float, what: str) -> tuple[str, re.Match]:
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            text = _ESCAPES.sub("", buf.decode("utf-8", "replace").replace("\r", ""))
            m = pattern.search(text)
            if m:
                return text, m
            if self.boot.proc.poll() is not None:
                raise ShellError(f"QEMU exited (rc {self.boot.proc.returncode}) during {what}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise ShellError(f"no end of {what} within {timeout:.0f} s:\n{text[-3000:]}")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ShellError(f"the serial socket closed during {what}:\n{text[-3000:]}")
            buf += chunk

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Run one shell command line; (exit status, its output)."""
        tok = uuid.uuid4().hex[:12]
        self.sock.sendall(f'{command}; echo "CCSHELL-""{tok}-rc=$?"\n'.encode())
        text, m = self._read_until(re.compile(rf"CCSHELL-{tok}-rc=(\d+)"), timeout, repr(command[:60]))
        # (the first command's output also holds the tty's echo of it: echo was still on)
        return int(m.group(1)), text[:m.start()]

    def headless(self, words: str, timeout: float = 600) -> tuple[int, str]:
        """`coldclone headless --cmdline WORDS` in the live system, as the headless service runs
        it from /proc/cmdline; (exit status, everything it printed)."""
        return self.run(f"/opt/coldclone/bin/coldclone headless --cmdline {shlex.quote(words)} 2>&1",
                        timeout=timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            p = self.boot.proc
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
            if self.boot.serial_socket:
                try:
                    os.unlink(self.boot.serial_socket)
                    os.rmdir(os.path.dirname(self.boot.serial_socket))
                except OSError:
                    pass
