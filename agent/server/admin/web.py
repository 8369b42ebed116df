"""`coldclone-server web`: the wave page a migration team keeps open, and its API.

    GET /             the page (page.py), refreshing itself
    GET /fragment     the page's changing part
    GET /api/status   `coldclone-server status --json` of this server and every --peer, merged
    GET /api/status?local=1   this server's alone (what a peer asks)

Several conversion servers: each runs its own `web` (on localhost, or an address its team
reaches), and one of them is given the others as `--peer http://host:port`; it asks each peer's
/api/status?local=1 on every refresh (in parallel, 3 s at most each) and shows them together. A
peer that does not answer is named on the page; its captures are not guessed at.

Read-only: GET and HEAD only, nothing is written anywhere; the page loads nothing from
elsewhere (a Content-Security-Policy of 'self'). It serves no keys and no configuration: only
what status reads (capture ids, host names, states, paths and failure messages).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ... import protocol as P
from ...errors import UsageError
from . import page
from .status import STALL_SECONDS, CaptureStatus, dumps, merge, scan

log = logging.getLogger("coldclone.web")

DEFAULT_LISTEN = "127.0.0.1:8023"
PEER_TIMEOUT = 3.0
MAX_PEER_BYTES = 32 << 20


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT ([v6]:PORT too) as --listen takes it."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"--listen {text!r}: write ADDRESS:PORT, e.g. {DEFAULT_LISTEN} (this machine only) "
                         f"or 0.0.0.0:8023 (every network it is on)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UsageError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def parse_peer(text: str) -> str:
    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password or u.query:
        raise UsageError(f"--peer {text!r}: give another conversion server's page, http://HOST:PORT "
                         f"(its coldclone-server web), without a user or a query")
    return text.rstrip("/")


@dataclass
class Board:
    """What the page shows: this server's root and the peers' answers."""
    root: str
    name: str
    peers: tuple[str, ...] = ()
    stall: float = STALL_SECONDS

    def local(self) -> list[CaptureStatus]:
        return scan(self.root, self.name, stall=self.stall)

    def _ask(self, peer: str) -> list[CaptureStatus]:
        # straight to the peer: a proxy from the environment is for the way out, not the site's LAN
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{peer}/api/status?local=1", timeout=PEER_TIMEOUT) as r:
            body = r.read(MAX_PEER_BYTES + 1)
        if len(body) > MAX_PEER_BYTES:
            raise ValueError(f"its answer is larger than {MAX_PEER_BYTES >> 20} MiB")
        data = json.loads(body)
        if not isinstance(data, list):
            raise ValueError("its answer is not a JSON list")
        return [CaptureStatus.load(o, f"{peer} status[{i}]") for i, o in enumerate(data)]

    def everything(self) -> tuple[list[CaptureStatus], dict[str, str]]:
        """Every server's captures (merged: a capture that moved counts once) and the peers that
        did not answer, with why."""
        down: dict[str, str] = {}
        out = self.local()
        if self.peers:
            with ThreadPoolExecutor(len(self.peers)) as ex:
                futs = {p: ex.submit(self._ask, p) for p in self.peers}
                for p, f in futs.items():
                    try:
                        out += f.result()
                    except (OSError, ValueError, urllib.error.URLError, P.ProtocolError) as e:
                        down[p] = str(getattr(e, "reason", None) or e)
        return merge(out), down


class Handler(BaseHTTPRequestHandler):
    board: Board
    refresh: float
    server_version = "coldclone-server"
    sys_version = ""

    def log_message(self, fmt, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        try:
            if u.path == "/api/status":
                local = parse_qs(u.query).get("local") == ["1"]
                statuses = self.board.local() if local else self.board.everything()[0]
                body = dumps(statuses).encode()
                self._send(200, body, "application/json")
            elif u.path in ("/", "/fragment"):
                statuses, down = self.board.everything()
                text = (page.fragment(statuses, down) if u.path == "/fragment" else
                        page.page(statuses, down, f"coldclone wave: {self.board.name}"
                                  + (f" and {len(self.board.peers)} peer(s)" if self.board.peers else ""),
                                  self.refresh))
                self._send(200, text.encode(), "text/html; charset=utf-8")
            elif u.path == "/page.css":
                self._send(200, page.CSS.encode(), "text/css; charset=utf-8")
            elif u.path == "/page.js":
                self._send(200, page.JS.encode(), "text/javascript; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except Exception as e:    # a page that cannot be made says so, and the server goes on
            log.exception("GET %s", self.path)
            self._send(500, f"internal error: {e}\n".encode(), "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def _read_only(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only


def serve(listen: str, root: str, peers: tuple[str, ...] = (), name: str | None = None,
          refresh: float = 3.0, stall: float = STALL_SECONDS, ready: threading.Event | None = None) -> None:
    host, port = parse_listen(listen)
    board = Board(root, name or socket.gethostname(), tuple(parse_peer(p) for p in peers), stall)
    handler = type("BoundHandler", (Handler,), {"board": board, "refresh": refresh})
    cls = ThreadingHTTPServer
    if ":" in host:
        cls = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    httpd = cls((host, port), handler)
    httpd.daemon_threads = True
    if not ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost" else host).is_loopback:
        log.warning("listening on %s:%d: every network that reaches it sees the wave (read-only)", host, port)
    print(f"coldclone-server: the wave page is at http://{listen}/ (API: /api/status)", flush=True)
    if ready is not None:
        ready.set()
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        httpd.server_close()
