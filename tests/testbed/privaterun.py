"""A private /run/coldclone: a mount namespace of its own, where coldclone's guard registry and
device locks start empty and no other coldclone looks.

Why: the registry is shared by every coldclone on the machine, on purpose (one guard for the
device tree), and any coldclone that takes a guard first sweeps the records of killed ones. A
test that kills a guard and then reads what `coldclone release` says about it lost that line
in CI whenever the other test worker's capture took a guard in between (the sweep was done, but
by that capture, into its log). The devices stay the real, shared ones; only the records move."""

from __future__ import annotations

import os
import subprocess

from agent.source.capture.guard import GUARD_DIR, LOCK_DIR

RUN_DIR = os.path.dirname(GUARD_DIR)


class PrivateRun:
    """A sleeping process in its own mount namespace, with a fresh tmpfs on RUN_DIR. Commands
    join it through nsenter (which execs them: a Popen's pid is the command's own); this
    process reaches its files through /proc/PID/root."""

    def __enter__(self) -> "PrivateRun":
        assert os.path.dirname(LOCK_DIR) == RUN_DIR
        os.makedirs(RUN_DIR, exist_ok=True)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o mode=0755 coldclone-test {RUN_DIR} && echo up && exec sleep 3600"],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "up":
            self.__exit__()
            raise RuntimeError(f"could not make a private {RUN_DIR} (unshare said {line!r})")
        return self

    def argv(self, argv: list[str], cwd: str | None = None) -> list[str]:
        """argv run inside the namespace, in cwd (joining a mount namespace moves to its /)."""
        return ["nsenter", "-t", str(self.proc.pid), "-m", f"--wd={cwd or os.getcwd()}", "--", *argv]

    @property
    def guard_dir(self) -> str:
        return f"/proc/{self.proc.pid}/root{GUARD_DIR}"

    @property
    def lock_dir(self) -> str:
        return f"/proc/{self.proc.pid}/root{LOCK_DIR}"

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
