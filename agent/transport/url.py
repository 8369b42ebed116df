"""Where the images go, as the operator writes it: ssh://user@host:port/path, file:///path."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import UsageError

SCHEMES = ("ssh", "file")


@dataclass(frozen=True)
class TargetURL:
    scheme: str
    path: str
    user: str = ""
    host: str = ""
    port: int = 22

    def __str__(self) -> str:
        if self.scheme == "ssh":
            port = f":{self.port}" if self.port != 22 else ""
            return f"ssh://{self.user}@{self.host}{port}{self.path}"
        return f"file://{self.path}"


def redact(text: str) -> str:
    """The URL with any password replaced, fit for messages and logs."""
    u = urlsplit(text)
    if u.password is None:
        return text
    host = u.netloc.rsplit("@", 1)[1]
    return u._replace(netloc=f"{u.username}:****@{host}").geturl()


def parse_target(text: str) -> TargetURL:
    u = urlsplit(text)
    text = redact(text)
    if u.scheme not in SCHEMES:
        if u.scheme == "nfs":
            raise UsageError(f"target {text!r}: NFS targets are not supported yet; use ssh://user@host/path")
        raise UsageError(
            f"target {text!r}: expected ssh://user@host[:port]/path or file:///path "
            f"(got scheme {u.scheme or 'none'!r})"
        )
    if u.scheme == "file":
        if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise UsageError(f"target {text!r}: a file target is file:///absolute/path (three slashes)")
        return TargetURL("file", unquote(u.path))
    if not u.hostname:
        raise UsageError(f"target {text!r}: no host; expected ssh://user@host[:port]/path")
    if not u.username:
        raise UsageError(f"target {text!r}: no user; expected ssh://user@host[:port]/path")
    if u.password:
        raise UsageError(
            f"target {text!r}: never put a password in the URL (it ends up in logs and "
            f"process lists); use a key (--identity) or --password-env VAR"
        )
    try:
        port = u.port or 22
    except ValueError:
        raise UsageError(f"target {text!r}: the port is not a number between 1 and 65535") from None
    return TargetURL("ssh", unquote(u.path), user=unquote(u.username), host=u.hostname, port=port)
