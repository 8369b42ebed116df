"""Run the real `coldclone-receive` as a process on a hand-made stream, and measure it.

Its replies, stderr, exit status, wall time and peak RSS come back in a ReceiverRun. The peak
RSS is the kernel's own count (wait4) taken by a small launcher that forks and execs the receiver:
a process spawned straight from pytest inherits pytest's own high-water mark at exec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ReceiverRun:
    returncode: int
    replies: list[dict]
    stderr: str
    seconds: float
    max_rss: int          # bytes

    @property
    def error(self) -> dict:
        errs = [r for r in self.replies if r.get("event") == "error"]
        assert len(errs) == 1, (self.replies, self.stderr)
        return errs[0]


def receiver_argv(root: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent.server.receive.cli", "--root", root, *args]


def receiver_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
    env["PYTHONPATH"] = REPO
    return env


# Fork, exec the receiver, wait4 it and write its ru_maxrss (KiB) to the file named in argv[1].
_LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def start_receiver(root: str, *args: str, measure: bool = False) -> subprocess.Popen:
    """A receiver with a pipe on stdin (send with .stdin.write), replies on .stdout, log in a file.

    measure=True runs it under the launcher (its pid is then the launcher's: signal it directly
    only without measure)."""
    err = tempfile.TemporaryFile()
    argv = receiver_argv(root, *args)
    rss_file = None
    if measure:
        fd, rss_file = tempfile.mkstemp(prefix="coldclone-rss-")
        os.close(fd)
        argv = [sys.executable, "-c", _LAUNCH, rss_file, *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=err, env=receiver_env(), cwd=REPO)
    proc.stderr_file = err
    proc.rss_file = rss_file
    return proc


def finish(proc: subprocess.Popen, t0: float, timeout: float) -> ReceiverRun:
    """Wait (at most timeout) for a started receiver; kill it and fail when it does not end."""
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise AssertionError(f"coldclone-receive still running after {timeout} s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    reader.join(10)
    proc.stderr_file.seek(0)
    stderr = proc.stderr_file.read().decode(errors="replace")
    replies = [json.loads(line) for line in (out[0] if out else b"").splitlines() if line.strip()]
    max_rss = usage.ru_maxrss
    if proc.rss_file:
        with open(proc.rss_file) as f:
            max_rss = int(f.read())
        os.unlink(proc.rss_file)
    return ReceiverRun(proc.returncode, replies, stderr, seconds, max_rss * 1024)


def run_receiver(root: str, blob: bytes, *args: str, timeout: float = 60, close: bool = True) -> ReceiverRun:
    """Feed blob to a fresh receiver (closing its stdin after, unless close=False) and wait for it."""
    t0 = time.monotonic()
    proc = start_receiver(root, *args, measure=True)

    def feed():
        try:
            proc.stdin.write(blob)
            proc.stdin.flush()
            if close:
                proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass   # the receiver stopped reading (it refused the stream): its reply says why

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        return finish(proc, t0, timeout)
    finally:
        feeder.join(10)   # the receiver has exited: the write ends (EPIPE) at once
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
