"""`coldclone-receive --root DIR`: the conversion-server end, run by sshd per capture.

Meant to be the forced command of the agent's key, so a lost ISO gives no shell:

    command="coldclone-receive --root /srv/coldclone",restrict ssh-ed25519 AAAA...

Under a forced command sshd puts what the agent asked to run into
SSH_ORIGINAL_COMMAND; its --root may only name a directory inside ours.
The stream comes on stdin; JSON-line replies go to stdout; the log to stderr.

The process lives exactly as long as its session: no byte from the agent for
--idle-timeout seconds while one is awaited (an sftp/scp attempt with the key,
an agent lost in a network cut), SIGHUP, or the session gone (parent process
replaced, stdout's reader closed) even while long work runs (hashing, qemu-img)
all end it the same way: failure.json, an error reply, exit 1.

`coldclone-receive --root DIR --gc` lists the `.partial` captures in DIR and
cleans those whose receiver died (never a live one).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import shlex
import signal
import sys
import threading
import time
from typing import BinaryIO, Callable

from ...bwlimit import EXAMPLES, parse_rate
from ...choices import ConvertEngine, ConvertNetwork, words
from ...errors import UsageError
from ...runcmd import spawn
from .convqueue import default_max_conversions
from .receiver import CaptureSink, Receiver, SessionEnded
from .share import SessionShare, ThrottledStream
from .unfinished import gc

DEFAULT_IDLE_TIMEOUT = 600.0
WATCH_INTERVAL = 1.0
# After the agent's end closed, this long for the record loop to reach the cut in what it sent
DRAIN_SECONDS = 30.0


def requested_root_from_env() -> str | None:
    cmd = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == "--root" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--root="):
            return w.split("=", 1)[1]
    return None


class Session:
    """Ties this process to its SSH session: idle timeout on reads, hangup, parent or reader gone.

    Each ending is delivered to the main thread as a signal whose handler raises SessionEnded,
    so a blocked read (EINTR), a hashing loop or a qemu-img run (subprocess.run kills its child
    when interrupted) all stop where they are and the receiver's one handler records why.
    """

    def __init__(self, idle_timeout: float):
        self.idle_timeout = idle_timeout
        self.reason: str | None = None
        self.ppid = os.getppid()
        self._stop = threading.Event()
        # True while the receiver records a failure: an ending then is noted, not raised. A cut
        # stream (the agent killed) ends in a StreamCut and, within WATCH_INTERVAL, in the
        # watcher's SIGHUP too (sshd closes our stdout): raised in the middle of the failure's
        # fsyncs, it cut the cleanup short, and no failure.json was written, the lock stayed
        # (the capture looked like a dead receiver's, which --gc cleans).
        self.spare: Callable[[], bool] = lambda: False

    def _end(self, reason: str) -> None:
        if self.reason is None:       # the first reason wins; later signals are ignored
            self.reason = reason
            if not self.spare():
                raise SessionEnded(reason)

    def _on_alarm(self, signum, frame) -> None:
        self._end(f"no data from the agent for {self.idle_timeout:g} s (--idle-timeout): the agent "
                  f"stopped sending or this was not a coldclone capture (sftp, scp)")

    _pending: str | None = None   # what the watcher saw, for the SIGHUP it sends

    def _on_hup(self, signum, frame) -> None:
        self._end(self._pending or f"the session ended ({signal.Signals(signum).name})")

    def start(self) -> "Session":
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_hup)
        threading.Thread(target=self._watch, name="cc-session", daemon=True).start()
        return self

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)   # only POLLERR/POLLHUP: the reader went away
        stdin = select.poll()
        stdin.register(sys.stdin.fileno(), 0)
        drain_until = None
        while not self._stop.wait(WATCH_INTERVAL):
            why = None
            if os.getppid() != self.ppid:
                why = f"the session's process (pid {self.ppid}) is gone"
            elif any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
                why = "the agent's end of the session closed"
                # The agent is gone, and so is its writing end: what it sent before the cut is
                # still in the pipe and the receiver's queue (up to 33 MB). Let the record loop
                # reach the cut itself (StreamCut: every whole record journaled) rather than
                # stop it mid-queue, within DRAIN_SECONDS.
                if any(ev & select.POLLHUP for _, ev in stdin.poll(0)):
                    drain_until = drain_until or time.monotonic() + DRAIN_SECONDS
                    if time.monotonic() < drain_until:
                        continue
            if why:
                self._pending = why
                # To the main thread itself: a signal to the process may land on this thread,
                # which would not interrupt the main thread's blocked read.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGHUP)
                return

    def stop(self) -> None:
        self._stop.set()
        signal.setitimer(signal.ITIMER_REAL, 0)

    def stream(self, raw: BinaryIO) -> "IdleStream":
        return IdleStream(raw, self.idle_timeout)


class IdleStream:
    """stdin for the record reader: each read waits at most idle_timeout for the agent's next bytes.

    read1 returns what has arrived, so a slow link that keeps sending never times out; only
    silence does.
    """

    def __init__(self, raw: BinaryIO, idle_timeout: float):
        self.raw = raw
        self.idle_timeout = idle_timeout

    def read(self, n: int) -> bytes:
        signal.setitimer(signal.ITIMER_REAL, self.idle_timeout)
        try:
            return self.raw.read1(n)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="coldclone-receive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="directory the captures are written into (and confined to)")
    ap.add_argument("--keep-raw", action="store_true",
                    help="also make a raw copy of each verified qcow2 (qemu-img convert, then compare: a second "
                         "copy, and time after the last byte that grows with the disk)")
    ap.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                    help=f"end the session when the agent sends nothing for this long while the receiver "
                         f"waits for data (default {DEFAULT_IDLE_TIMEOUT:g})")
    ap.add_argument("--gc", action="store_true",
                    help="list the unfinished (.partial) captures in --root and clean those whose receiver died")
    ap.add_argument("--convert", action="store_true",
                    help="once the capture is complete and verified, queue coldclone-convert on it (detached; "
                         "at most --max-conversions at a time per root; its output in <capture>/conversion.out)")
    ap.add_argument("--max-conversions", type=int, default=None, metavar="N",
                    help=f"with --convert: conversions run at once in this root, the others queue (default "
                         f"from the cores and memory: {default_max_conversions()} here)")
    ap.add_argument("--bwlimit", metavar="RATE",
                    help=f"cap the total rate of all sessions into this root ({EXAMPLES}); each session "
                         f"reads at its share")
    ap.add_argument("--convert-engine", choices=words(ConvertEngine), default=ConvertEngine.VIRT_V2V.value,
                    help="with --convert: coldclone-convert's --engine (default virt-v2v; fixups is minutes "
                         "faster for guests whose initramfs already has the virtio drivers)")
    ap.add_argument("--network", choices=words(ConvertNetwork), default=ConvertNetwork.DHCP.value,
                    help="with --convert: coldclone-convert's --network (default dhcp: the primary interface "
                         "switches to DHCP; keep: it keeps its static addresses)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="coldclone-receive: %(message)s")
    if args.idle_timeout <= 0:
        ap.error(f"--idle-timeout {args.idle_timeout:g}: give a positive number of seconds")
    if args.gc:
        if os.environ.get("SSH_ORIGINAL_COMMAND") is not None:
            # An agent's key runs us as a forced command: it may send a stream, not manage the root.
            print("coldclone-receive: --gc is for the server's operator, not over the agent's key", file=sys.stderr)
            return 2
        for st in gc(args.root):
            print(f"{st.state:8} {st.path}: {st.detail}")
        return 0
    if args.convert_engine != ConvertEngine.VIRT_V2V and not args.convert:
        ap.error("--convert-engine needs --convert")
    if args.network != ConvertNetwork.DHCP and not args.convert:
        ap.error("--network needs --convert")
    if args.max_conversions is not None and (args.max_conversions < 1 or not args.convert):
        ap.error("--max-conversions N: N of at least 1, with --convert")
    try:
        bwlimit = parse_rate(args.bwlimit, "--bwlimit") if args.bwlimit else None
    except UsageError as e:
        ap.error(str(e))
    max_conversions = (args.max_conversions or default_max_conversions()) if args.convert else None
    grow_pipe(sys.stdin.fileno())
    session = Session(args.idle_timeout).start()
    share = None
    try:
        rx = Receiver(args.root, sys.stdout.buffer, requested_root=requested_root_from_env(),
                      keep_raw=args.keep_raw, convert=args.convert, bwlimit=bwlimit,
                      max_conversions=max_conversions)
        session.spare = lambda: rx.failing
        stream = session.stream(sys.stdin.buffer)
        if bwlimit:
            try:
                share = SessionShare(args.root, bwlimit)
                stream = ThrottledStream(stream, share)
            except OSError as e:     # an unusable root: the receiver's own check names it
                logging.getLogger("coldclone.receive").error("--bwlimit: cannot share the cap through %s: %s",
                                                             args.root, e)
        rc = rx.run(stream)
    finally:
        session.stop()
        if share is not None:
            share.close()
    if rc == 0 and args.convert and isinstance(rx.sink, CaptureSink):
        queue_conversion(rx.sink.cap.final_path, args.convert_engine, max_conversions, args.root, args.network)
    return rc


def grow_pipe(fd: int, size: int = 1 << 20) -> None:
    """A 1 MiB pipe from sshd instead of the default 64 KiB: sshd writes and we read in fewer,
    larger steps, and a burst of records waits in the pipe instead of closing the SSH window.
    Not a pipe (a file, a socket in the tests), or a lower pipe-max-size: left as it is."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (OSError, AttributeError):
        pass


def queue_conversion(capture_path: str, engine: str = ConvertEngine.VIRT_V2V.value, max_conversions: int | None = None,
                     queue_root: str | None = None, network: str = ConvertNetwork.DHCP.value) -> int:
    """Start `coldclone-convert capture_path` detached: the agent's SSH session ends with the
    capture, the conversion waits its turn in the root's queue (receive/convqueue.py). By
    command, not by import: the converter builds on this package, not the other way round."""
    here = os.path.join(os.path.dirname(sys.executable), "coldclone-convert")
    exe = here if os.access(here, os.X_OK) else "coldclone-convert"
    argv = [exe, capture_path, "--engine", engine, "--network", network]
    if max_conversions:
        argv += ["--max-conversions", str(max_conversions)]
    if queue_root:
        argv += ["--queue", os.path.realpath(queue_root)]
    return spawn(argv, os.path.join(capture_path, "conversion.out"))


def run_and_exit() -> None:
    """The process's entry: main(), then exit without the interpreter's finalization.

    The prefetch thread (prefetch.py) may still be blocked in a read of stdin when the session
    ends (a refusal before the agent stopped sending): finalization would then try to take the
    stdin buffer's lock that thread holds and abort the process ("Fatal Python error:
    _enter_buffered_busy", exit 250 instead of the refusal's 1). Everything the receiver keeps is
    already fsynced by then, so what is left to do is flush the replies and the log."""
    try:
        rc = main()
    except SystemExit as e:    # argparse's usage errors, the idle alarm
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    run_and_exit()
