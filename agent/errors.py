"""Errors the operator sees, each tied to a documented exit code.

Every error carries a message that names the problem and what to do about it;
front ends print ``str(err)`` and exit with ``err.exit_code``.
"""

from typing import List, Optional

# Standard library only, Python 3.6 syntax: the `coldclone sync` file carries this module
# (agent/sync/; tests/unit/test_sync_file.py parses it as 3.6).

# Exit codes of `coldclone` (documented in docs/cli.md).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_SOURCE = 4
EXIT_SERVER = 5
EXIT_CANCELLED = 6
# The capture completed and verified, but some source sectors could not be read: they are zeros
# in the image and listed in the manifest. Never 0: a fleet script must not take it for a clean copy.
EXIT_UNREADABLE = 7


class ColdcloneError(Exception):
    exit_code = EXIT_INTERNAL


class UsageError(ColdcloneError):
    """Something the operator typed is wrong (flag, URL, kernel command line key)."""

    exit_code = EXIT_USAGE


class ConnectionError_(ColdcloneError):
    """Cannot reach or authenticate to the conversion server, or its host key is not trusted."""

    exit_code = EXIT_CONNECTION


class HostKeyError(ConnectionError_):
    pass


class SourceError(ColdcloneError):
    """The source disk could not be read (or guarded)."""

    exit_code = EXIT_SOURCE


class ServerError(ColdcloneError):
    """The conversion server refused or failed the capture (digest, disk full, qemu-img ...)."""

    exit_code = EXIT_SERVER

    def __init__(self, message: str, code: str = "server_error"):
        super().__init__(message)
        self.code = code


class CancelledError(ColdcloneError):
    exit_code = EXIT_CANCELLED


class CommandError(ColdcloneError):
    """An external command failed; the message names the command, its exit code and stderr."""

    def __init__(self, argv: List[str], returncode: Optional[int], stderr: str, hint: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        msg = f"command failed: {' '.join(argv)} (exit {returncode})"
        if tail:
            msg += ": " + " | ".join(tail)
        if hint:
            msg += f". {hint}"
        super().__init__(msg)
