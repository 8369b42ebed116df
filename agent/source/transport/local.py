"""file:///path: the receiver runs on this machine, fed through a pipe.

Same receiver, same checks, same manifest as over SSH; this is how a
capture lands on a local USB / e-SATA disk that is already mounted.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from ...errors import ConnectionError_
from .base import Connection, ReplyPump


class LocalConnection(Connection):
    def __init__(self, root: str, extra_args: list[str] | None = None):
        self.description = f"file://{root}"
        # -I as the installed coldclone-receive launcher runs it: no PYTHON* variables, no user site
        argv = [sys.executable, "-I", "-m", "agent.server.receive.cli", "--root", root, *(extra_args or [])]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, bufsize=0)
        except OSError as e:
            raise ConnectionError_(f"cannot start the local receiver: {e}") from None
        self.pump = ReplyPump(self.proc.stdout)
        self._err = b""
        self._et = threading.Thread(target=self._drain_err, daemon=True)
        self._et.start()

    def _drain_err(self) -> None:
        self._err = self.proc.stderr.read()

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def close_write(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def stderr_text(self) -> str:
        self._et.join(2)
        return self._err.decode(errors="replace")

    def exit_status(self, timeout: float = 10.0) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.close_write()
        if self.proc.poll() is None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
