"""Starting and stopping the throwaway daemons (sshd, tgtd, nfs-ganesha) the testbed runs.

They live for a whole test or module, so they cannot go through agent.runcmd.run (which
runs a command to completion); this is their one way in and out."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from typing import Callable


class Spooled(subprocess.Popen):
    """A child (a coldclone capture the test stops half way) whose stdout and stderr go to
    files instead of pipes: however much it prints before the test reads (the inventory of a
    machine with many loop devices is more than a pipe holds), it never blocks on a full pipe
    while the test waits for it to reach some state. communicate() returns the text as usual."""

    def __init__(self, argv: list[str], **kw):
        self._spool = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        super().__init__(argv, stdout=self._spool[0], stderr=self._spool[1], text=True, **kw)

    def communicate(self, input=None, timeout=None):
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired as e:
            # The caller's assertion shows where it hung: the child is stopped, its text kept.
            self.kill()
            self.wait()
            out, err = self._read()
            raise AssertionError(f"{self.args[:3]} still running after {timeout} s (killed); what it "
                                 f"printed:\n{(out + err)[-4000:]}") from e
        return self._read()

    def _read(self) -> tuple[str, str]:
        out = []
        for f in self._spool:
            f.seek(0)
            out.append(f.read())
            f.close()
        return out[0], out[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, for a daemon about to bind it."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_daemon(argv: list[str], name: str, addr: tuple[str, int], log: str, *,
                 output: str | None = None, ready: Callable[[], bool] | None = None,
                 timeout: float = 15.0) -> subprocess.Popen:
    """Start a foreground daemon and wait until it accepts TCP connections on addr (and
    ready() says yes, when given). Its stdout/stderr go to output (None: discarded, for a
    daemon that writes its own log). If it exits or is not up within timeout, it is
    stopped and the error carries the tail of log."""
    out = open(output, "ab") if output else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if output:
            out.close()       # the child holds its own copy
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}: {_tail(log)}")
        try:
            socket.create_connection(addr, timeout=0.5).close()
            if ready is None or ready():
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{name} did not start listening on {addr[0]}:{addr[1]} "
                               f"within {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.1)


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:] or "(its log is empty)"
    except OSError as e:
        return f"(no log: {e})"


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: a daemon that hangs must not outlive its test."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def receiver_pids(receiver_root: str) -> list[int]:
    """Every process of a coldclone-receive writing under receiver_root (sshd's `sh -c` around
    it included)."""
    out = subprocess.run(["pgrep", "-f", f"coldclone-receive --root {receiver_root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def slow_syscall(pids: list[int], syscall: str, seconds: float) -> subprocess.Popen:
    """strace attached to pids (and their threads), delaying every `syscall` by `seconds` as it
    enters (strace's fault injection): a real process's race window made wide, its code as it
    is. stop_process() detaches it; the processes run on."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
            "-e", f"inject={syscall}:delay_enter={int(seconds * 1e6)}"]
    proc = subprocess.Popen(argv + [x for p in pids for x in ("-p", str(p))],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)     # strace attaches on its own and says nothing when done: a moment for it
    return proc


def kill_receivers(receiver_root: str) -> int:
    """kill -9 every coldclone-receive writing under receiver_root and the sshd session process
    above it: the conversion server's side of a capture vanishes at once (a crash, a reboot).
    How many receivers were killed."""
    import os
    import signal

    n = 0
    for pid in receiver_pids(receiver_root):
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            os.kill(pid, signal.SIGKILL)
            os.kill(ppid, signal.SIGKILL)
            n += 1
        except (FileNotFoundError, ProcessLookupError):
            pass   # it ended by itself meanwhile
    return n
