"""Where the images go, as the operator writes it: ssh://user@host:port/path, file:///path,
nfs://host[:port]/export/path[?vers=4.2]."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

from ...errors import UsageError

SCHEMES = ("ssh", "file", "nfs")
NFS_VERSIONS = ("3", "4", "4.0", "4.1", "4.2")


@dataclass(frozen=True)
class TargetURL:
    scheme: str
    path: str
    user: str = ""
    host: str = ""
    port: int = 22
    nfs_version: str | None = None   # nfs only: vers= of the mount; None lets mount.nfs negotiate

    def __str__(self) -> str:
        if self.scheme == "ssh":
            port = f":{self.port}" if self.port != 22 else ""
            return f"ssh://{self.user}@{self.host}{port}{self.path}"
        if self.scheme == "nfs":
            port = f":{self.port}" if self.port != 2049 else ""
            query = f"?vers={self.nfs_version}" if self.nfs_version else ""
            return f"nfs://{self.host}{port}{self.path}{query}"
        return f"file://{self.path}"


# query keys whose values are settings, not credentials (nfs://...?vers=4.2)
PLAIN_QUERY_KEYS = ("vers",)


def _split(text: str) -> SplitResult | None:
    """urlsplit, or None for what it cannot split at all (an unclosed IPv6 bracket: it raises
    ValueError there, which must never escape as a traceback)."""
    try:
        return urlsplit(text)
    except ValueError:
        return None


# user:password@ and ?query of a URL urlsplit cannot take, found without it.
_RAW_PASSWORD = re.compile(r"(?<=://)([^/@:]*):([^/@]*)@")


def redact(text: str) -> str:
    """The URL with its password and query values (tokens, pre-signed signatures) replaced
    by ****, fit for messages and logs. Text that is not a URL comes back unchanged."""
    u = _split(text)
    if u is None:
        text = _RAW_PASSWORD.sub(r"\1:****@", text)
        return text.split("?", 1)[0] + ("?****" if "?" in text else "")
    if not u.scheme or not u.netloc:
        return text
    if u.password is not None:
        host = u.netloc.rsplit("@", 1)[1]
        u = u._replace(netloc=f"{u.username}:****@{host}")
    if u.query:
        pairs = [(k, v if k in PLAIN_QUERY_KEYS else "****")
                 for k, v in parse_qsl(u.query, keep_blank_values=True)]
        u = u._replace(query=urlencode(pairs, safe="*.").replace("%2A", "*"))
    return u.geturl()


def url_secrets(text: str) -> list[str]:
    """The parts of a URL redact() hides, to mask them wherever else they turn up (a
    library's error message quoting the URL or just its path and query)."""
    u = _split(text)
    if u is None:
        m = _RAW_PASSWORD.search(text)
        query = text.split("?", 1)[1] if "?" in text else ""
        return ([m.group(2)] if m and m.group(2) else []) + ([query] if len(query) >= 4 else [])
    out = [u.password] if u.password else []
    # values shorter than 4 characters are no credential, and replacing them would garble
    # the message they are masked in
    out += [v for k, v in parse_qsl(u.query, keep_blank_values=True)
            if len(v) >= 4 and k not in PLAIN_QUERY_KEYS]
    return out


def parse_target(text: str) -> TargetURL:
    u = _split(text)
    text = redact(text)
    if u is None:
        raise UsageError(f"target {text!r}: the host is not a valid address (an IPv6 address is "
                         f"written in closed brackets: ssh://user@[2001:db8::5]:22/path)")
    if u.scheme not in SCHEMES:
        raise UsageError(
            f"target {text!r}: expected ssh://user@host[:port]/path, file:///path or nfs://host/export/path "
            f"(got scheme {u.scheme or 'none'!r})"
        )
    if u.scheme == "file":
        if u.netloc not in ("", "localhost") or not u.path.startswith("/"):
            raise UsageError(f"target {text!r}: a file target is file:///absolute/path (three slashes)")
        return TargetURL("file", unquote(u.path))
    if u.scheme == "nfs":
        return _parse_nfs(u, text)
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


def _parse_nfs(u, text: str) -> TargetURL:
    """nfs://host[:port]/export/path[?vers=N]: the path is mounted as host:/export/path."""
    if not u.hostname:
        raise UsageError(f"target {text!r}: no host; expected nfs://host/export/path")
    if u.username or u.password:
        raise UsageError(f"target {text!r}: an NFS target has no user; expected nfs://host/export/path")
    path = unquote(u.path)
    if not path.startswith("/") or path == "/":
        raise UsageError(f"target {text!r}: name the export, e.g. nfs://{u.hostname}/srv/images")
    if any(part == ".." for part in path.split("/")):
        raise UsageError(f"target {text!r}: '..' is not allowed in the export path")
    try:
        port = u.port or 2049
    except ValueError:
        raise UsageError(f"target {text!r}: the port is not a number between 1 and 65535") from None
    vers = None
    for item in filter(None, u.query.split("&")):
        key, _, value = item.partition("=")
        if key != "vers" or value not in NFS_VERSIONS:
            raise UsageError(f"target {text!r}: the only option is vers= ({', '.join(NFS_VERSIONS)})")
        vers = value
    return TargetURL("nfs", path.rstrip("/") or "/", host=u.hostname, port=port, nfs_version=vers)
