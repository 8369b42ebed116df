"""From a target URL to a way of connecting: the one place every front end asks.

`coldclone capture`, the headless runner and the TUI all call `open_target()`;
it returns a Target whose `connect()` makes one receiver session and whose
`close()` undoes whatever opening it needed (e.g. an NFS mount).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ...errors import UsageError
from . import nfs, ssh
from .base import Connection
from .local import LocalConnection
from .url import TargetURL, parse_target


@dataclass
class Target:
    url: TargetURL
    connect: Callable[[], Connection]
    local_path: str | None = None     # where images land when the target is local (file, nfs)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_target(text: str, *, identity: str | None = None, hostkey: str | Sequence[str] | None = None,
                known_hosts: str | None = None, password: str | None = None,
                timeout: float = 20.0) -> Target:
    url = parse_target(text)
    if url.scheme == "file":
        return Target(url, lambda: LocalConnection(url.path), local_path=url.path)
    if url.scheme == "nfs":
        # the URL's whole path is mounted: the receiver writes at the mount point itself
        path, unmount = nfs.mount(url)
        return Target(url, lambda: LocalConnection(path), local_path=path, _cleanups=[unmount])
    if not identity and password is None:
        raise UsageError("an ssh target needs a key (--identity KEY / coldclone.identity=) or a password")
    known = known_hosts or ssh.default_known_hosts()
    return Target(url, lambda: ssh.connect(url, identity=identity, hostkey=hostkey, known_hosts=known,
                                           password=password, timeout=timeout))
