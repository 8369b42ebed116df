"""The one way coldclone runs external commands (mdadm, iscsiadm, qemu-img, blkid ...).

Every call is logged with its argv, exit code and stderr; a failure raises
CommandError naming the command, so no caller has to invent its own message.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import CommandError

log = logging.getLogger("coldclone.cmd")

# Which Debian package provides a tool, for the "not found" message.
PACKAGE_OF = {
    "qemu-img": "qemu-utils",
    "iscsiadm": "open-iscsi",
    "mdadm": "mdadm",
    "blkid": "util-linux",
    "partx": "util-linux",
    "runuser": "util-linux",
    "useradd": "passwd",
    "usermod": "passwd",
    "losetup": "util-linux",
    "parted": "parted",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "mkfs.vfat": "dosfstools",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "dhclient": "isc-dhcp-client",
    "xfs_logprint": "xfsprogs",
    **{f"partclone.{fs}": "partclone" for fs in ("extfs", "xfs", "btrfs", "fat", "ntfs")},
    "guestfish": "libguestfs-tools",
    "virt-v2v": "virt-v2v",
    "nbdcopy": "libnbd-bin",
    "qemu-nbd": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: list[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
    hint: str = "",
    quiet: bool = False,
    secrets: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    leaves_server: bool = False,
    output_file: str | None = None,
) -> Result:
    """Run argv (never through a shell) and return its output as text.

    check=False returns failures instead of raising. ``quiet`` lowers the log
    level for commands polled in loops. Every value in ``secrets`` (a CHAP
    password passed to iscsiadm, say) is shown as **** in the log and in errors.
    ``leaves_server``: the command forks a server that outlives it (guestfish --listen) and
    keeps its stderr; that goes to a file here, or we would wait for the server's end.
    ``output_file``: stdout and stderr (merged, in order) go to this file as they come, for
    long runs (virt-v2v) someone may watch; the Result holds that text as stderr.
    """
    argv = [str(a) for a in argv]
    return _run(argv, input, timeout, hint, quiet, check, [s for s in secrets if s], env, leaves_server,
                output_file)


def spawn(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> int:
    """Start argv detached (its own session, stdin /dev/null, stdout and stderr appended to
    log_path) and return its pid without waiting: work queued behind a finished job (a
    conversion after the receiver's capture) that must not hold the caller's session open."""
    argv = [str(a) for a in argv]
    if shutil.which(argv[0]) is None:
        raise CommandError(argv, None, f"{argv[0]}: command not found")
    with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)
    log.info("started %s (pid %d), output in %s", argv, proc.pid, log_path)
    return proc.pid


class Service:
    """A long-lived child this process talks to and then stops (qemu-nbd serving an image).
    Logged like run(): argv when it starts, exit code and stderr when it stops. It dies with this
    process (PR_SET_PDEATHSIG: a receiver killed with -9 leaves no server holding its image's
    lock), so start it from the thread that outlives it (the main thread)."""

    def __init__(self, argv: list[str], *, cwd: str | None = None, umask: int | None = None):
        self.argv = [str(a) for a in argv]
        if shutil.which(self.argv[0]) is None:
            pkg = PACKAGE_OF.get(self.argv[0].rsplit("/", 1)[-1])
            where = f" (install the Debian package {pkg})" if pkg else ""
            raise CommandError(self.argv, None, f"{self.argv[0]}: command not found{where}")
        self._err = tempfile.TemporaryFile()
        # setpriv (util-linux) sets the parent-death signal, then execs it: no Python runs between
        # fork and exec in this threaded process (a preexec_fn could deadlock there)
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *self.argv]
        log.info("starting %s%s", self.argv, f" in {cwd}" if cwd else "")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err, close_fds=True, umask=-1 if umask is None else umask)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, then SIGKILL after timeout; its stderr (logged with its exit code)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = ""
        if not self._err.closed:
            self._err.seek(0)
            text = self._err.read().decode(errors="replace")
            self._err.close()
        log.info("stopped %s -> exit %d%s", self.argv, self.proc.returncode,
                 f"; stderr: {text.strip()[-500:]}" if text.strip() else "")
        return text


def _mask(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "****")
    return text


def _run(argv, input, timeout, hint, quiet, check, secrets, env=None, leaves_server=False,
         output_file=None) -> Result:
    shown = [_mask(a, secrets) for a in argv]
    if shutil.which(argv[0]) is None:
        pkg = PACKAGE_OF.get(argv[0].rsplit("/", 1)[-1])
        where = f" (install the Debian package {pkg})" if pkg else ""
        raise CommandError(shown, None, f"{argv[0]}: command not found{where}", hint)
    errfile = open(output_file, "w+b") if output_file else tempfile.TemporaryFile() if leaves_server else None
    try:
        proc = subprocess.run(
            argv, input=input, stdout=errfile if output_file else subprocess.PIPE,
            stderr=errfile or subprocess.PIPE, text=True, timeout=timeout, check=False, env=env
        )
        if output_file:
            proc.stdout = ""
        if errfile is not None:
            errfile.seek(0)
            proc.stderr = errfile.read().decode(errors="replace")
    except subprocess.TimeoutExpired:
        log.error("timeout after %ss: %s", timeout, shown)
        raise CommandError(shown, None, f"timed out after {timeout} s", hint) from None
    finally:
        if errfile is not None:
            errfile.close()
    stderr = _mask(proc.stderr, secrets)
    level = logging.DEBUG if quiet else logging.INFO
    log.log(level, "ran %s -> exit %d%s", shown, proc.returncode,
            f"; stderr: {stderr.strip()[-500:]}" if stderr.strip() else "")
    if check and proc.returncode != 0:
        raise CommandError(shown, proc.returncode, stderr or _mask(proc.stdout, secrets), hint)
    return Result(shown, proc.returncode, proc.stdout, stderr)
