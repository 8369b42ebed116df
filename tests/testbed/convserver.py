"""A conversion server the way a team sets one up: `coldclone-server init` (a service user, the
agents' key, authorized_keys with the forced command) behind a real OpenSSH sshd of its own, on
127.0.0.1 or inside a network namespace (its own address on a veth, as a second machine).

sshd runs with the distribution's defaults where they matter (StrictModes yes, the user's own
~/.ssh/authorized_keys), so what init writes is checked as sshd checks it. `kill()` is a server
lost mid-wave (sshd and every session's receiver killed at once); `start()` again is the same
server back (same host key, same root, same users).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

from agent.runcmd import run
from .netns import VethNamespace
from .procs import free_port, start_daemon, stop_process
from .sshd import sshd_config

BIN = os.path.dirname(os.path.abspath(__import__("sys").executable))


@dataclass
class InitOutput:
    identity: str
    hostkey: str
    cmdline: str
    lines: list[str]

    @classmethod
    def parse(cls, text: str) -> "InitOutput":
        vals = {}
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            if eq and key in ("identity", "hostkey", "cmdline", "iso"):
                vals[key] = value
        return cls(vals["identity"], vals["hostkey"], vals["cmdline"], text.splitlines())


def server_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "coldclone-server"), *args], capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class ConversionServer:
    name: str                       # its name on status and the page
    user: str                       # the service user init makes
    workdir: str
    ns: VethNamespace | None = None  # None: sshd on 127.0.0.1
    init_args: tuple[str, ...] = ()
    addr: str | None = None         # its address in the namespace (default: the veth's own)
    port: int = 0
    proc: subprocess.Popen | None = None
    init: InitOutput | None = None
    web_proc: subprocess.Popen | None = None
    inits: list[subprocess.CompletedProcess] = field(default_factory=list)

    @property
    def address(self) -> str:
        if self.addr:
            return self.addr
        return self.ns.ns_cidr.split("/")[0] if self.ns else "127.0.0.1"

    @property
    def root(self) -> str:
        return os.path.join(self.workdir, "root")

    @property
    def keys(self) -> str:
        return os.path.join(self.workdir, "keys")

    def p(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def set_up(self, *extra: str) -> InitOutput:
        """`coldclone-server init` (again): its printed lines, parsed; the run kept in .inits."""
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        if not os.path.exists(self.p("host_ed25519")):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host-{self.name}", "-f",
                 self.p("host_ed25519")])
        if not self.port:
            self.port = 22 if self.ns else free_port()
        r = server_cli("init", "--root", self.root, "--user", self.user, "--address",
                       f"{self.address}:{self.port}", "--host-key", self.p("host_ed25519.pub"),
                       "--keys", self.keys, *self.init_args, *extra)
        self.inits.append(r)
        assert r.returncode == 0, f"coldclone-server init failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        self.init = InitOutput.parse(r.stdout)
        return self.init

    def start(self) -> "ConversionServer":
        if self.init is None:
            self.set_up()
        with open(self.p("sshd_config"), "w") as f:
            # sshd's own defaults otherwise: StrictModes, the user's ~/.ssh/authorized_keys
            f.write(sshd_config(self.port, self.address, self.p("host_ed25519"), self.p("sshd.pid"), self.user))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        os.makedirs("/run/sshd", exist_ok=True)
        argv = [sshd, "-D", "-e", "-f", self.p("sshd_config")]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns.ns, *argv]
        self.proc = start_daemon(argv, f"sshd of {self.name}", (self.address, self.port), self.p("sshd.log"),
                                 output=self.p("sshd.log"))
        return self

    def url(self) -> str:
        return f"ssh://{self.user}@{self.address}:{self.port}/"

    def receivers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"coldclone-receive --root {os.path.realpath(self.root)}"],
                             capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> int:
        """The server lost: sshd, its sessions and their receivers killed at once (-9).
        How many receivers were running."""
        victims = self.receivers()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            # sshd's session processes are its children: the whole group of the daemon
            for pid in _descendants(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(10)
        return len(victims)

    def status(self) -> list[dict]:
        import json

        r = server_cli("status", "--root", self.root, "--json", "--name", self.name)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def start_web(self, port: int, peers: tuple[str, ...] = (), listen: str | None = None) -> str:
        """`coldclone-server web` on this server's own address (inside its namespace; `listen`:
        another address of it, 0.0.0.0 for all); its URL from this host."""
        argv = [os.path.join(BIN, "coldclone-server"), "web", "--listen", f"{listen or self.address}:{port}",
                "--root", self.root, "--name", self.name, "--refresh", "1"]
        for p in peers:
            argv += ["--peer", p]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns.ns, *argv]
        self.web_proc = start_daemon(argv, f"web of {self.name}", (self.address, port), self.p("web.log"),
                                     output=self.p("web.log"))
        return f"http://{self.address}:{port}"

    def stop(self) -> None:
        stop_process(self.web_proc, 5)
        if self.proc is not None:
            self.kill()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    kids = [int(p) for p in out.stdout.split()]
    return [d for k in kids for d in _descendants(k)] + kids


def remove_user(user: str) -> None:
    run(["userdel", "-r", user], check=False, quiet=True)
