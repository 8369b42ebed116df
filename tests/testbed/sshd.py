"""A throwaway OpenSSH sshd on 127.0.0.1 whose key runs coldclone-receive as a forced command.

Exactly the set-up DESIGN.md asks of a real conversion server:
    command="coldclone-receive --root DIR",restrict ssh-ed25519 ...
The receiver runs as an unprivileged user when the venv is reachable by
one, else as root through `PermitRootLogin forced-commands-only`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import agent
from agent.runcmd import run
from .procs import free_port, start_daemon, stop_process

TEST_USER = "coldclone-rx"


def _world_traversable(path: str) -> bool:
    p = os.path.realpath(path)
    while True:
        try:
            if not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


def ensure_user(name: str = TEST_USER) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name])
    # '!' (locked) makes sshd refuse the account without PAM; '*' only forbids passwords.
    run(["usermod", "-p", "*", name])


def sshd_config(port: int, listen: str, host_key: str, pid_file: str, user: str, extra: str = "") -> str:
    """A testbed sshd's config: one user, keys only, no PAM, room for a wave of sessions."""
    return f"""\
Port {port}
ListenAddress {listen}
HostKey {host_key}
PidFile {pid_file}
{extra}UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers {user}
MaxStartups 64
MaxSessions 64
LogLevel VERBOSE
"""


def fingerprint_of(pubfile: str) -> str:
    out = run(["ssh-keygen", "-l", "-E", "sha256", "-f", pubfile]).stdout.split()
    return out[1]


class Sshd:
    def __init__(self, receiver_root: str | None = None, workdir: str | None = None,
                 receiver_args: str = "", baseline_key: bool = False, accept_env: bool = False,
                 wrapper: str = ""):
        self.workdir = workdir or tempfile.mkdtemp(prefix="coldclone-sshd-", dir="/tmp")
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.receiver_root = receiver_root or os.path.join(self.workdir, "receiver")
        self.receiver_args = receiver_args
        self.baseline_key = baseline_key
        # `AcceptEnv *`: a careless server that lets the agent's key set any variable (the
        # receiver must not care: its launcher runs Python isolated)
        self.accept_env = accept_env
        # a command the receiver runs under (tests.testbed.killpoint: a fault at an exact step)
        self.wrapper = wrapper
        self.port = 0
        self.proc: subprocess.Popen | None = None
        bin_dir = os.path.dirname(sys.executable)
        self.receiver = os.path.join(bin_dir, "coldclone-receive")
        # sshd reads authorized_keys and runs the receiver as the login user:
        # everything it touches must be reachable by that user.
        reachable = all(_world_traversable(p) for p in (
            self.receiver, os.path.dirname(os.path.abspath(agent.__file__)), self.workdir))
        self.user = TEST_USER if reachable else "root"

    # paths
    def p(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    @property
    def client_key(self) -> str:
        return self.p("client_ed25519")

    @property
    def client_rsa_key(self) -> str:
        return self.p("client_rsa")

    @property
    def baseline_client_key(self) -> str:
        return self.p("baseline_ed25519")

    @property
    def known_hosts(self) -> str:
        return self.p("known_hosts")

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}/"

    def forced_command(self) -> str:
        extra = f" {self.receiver_args}" if self.receiver_args else ""
        wrap = f"{self.wrapper} " if self.wrapper else ""
        return f"{wrap}{self.receiver} --root {self.receiver_root}{extra}"

    def start(self) -> "Sshd":
        if self.user != "root":
            ensure_user(self.user)
        os.makedirs(self.receiver_root, exist_ok=True)
        if self.user != "root":
            try:
                shutil.chown(self.receiver_root, self.user)
            except OSError:
                pass  # a read-only root stays as it is: that is what some tests want
        os.makedirs("/run/sshd", exist_ok=True)
        keys = ["host_ed25519", "client_ed25519", "client_rsa"] + (["baseline_ed25519"] if self.baseline_key else [])
        for key in keys:
            if not os.path.exists(self.p(key)):
                ktype = ["-t", "rsa", "-b", "3072"] if key.endswith("rsa") else ["-t", "ed25519"]
                run(["ssh-keygen", "-q", *ktype, "-N", "", "-C", key, "-f", self.p(key)])
        lines = [f'command="{self.forced_command()}",restrict {open(self.p(k + ".pub")).read().strip()}'
                 for k in ("client_ed25519", "client_rsa")]
        if self.baseline_key:
            # Only `make bench` has this: a plain key for the dd | ssh baselines.
            lines.append(open(self.p("baseline_ed25519.pub")).read().strip())
        with open(self.p("authorized_keys"), "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.p("authorized_keys"), 0o644)
        self.port = free_port()
        root_login = "forced-commands-only" if self.user == "root" and not self.baseline_key else "prohibit-password"
        with open(self.p("sshd_config"), "w") as f:
            f.write(sshd_config(self.port, "127.0.0.1", self.p("host_ed25519"), self.p("sshd.pid"), self.user,
                                f"AuthorizedKeysFile {self.p('authorized_keys')}\nStrictModes no\n"
                                f"PermitRootLogin {root_login}\n"
                                + ("AcceptEnv *\n" if self.accept_env else "")))
        host_pub = open(self.p("host_ed25519.pub")).read().split()
        with open(self.known_hosts, "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.fingerprint = fingerprint_of(self.p("host_ed25519.pub"))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        log = self.p("sshd.log")
        self.proc = start_daemon([sshd, "-D", "-e", "-f", self.p("sshd_config")], "sshd",
                                 ("127.0.0.1", self.port), log, output=log)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10)

    def __enter__(self) -> "Sshd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ssh_argv(self, key: str | None = None) -> list[str]:
        """OpenSSH client argv for this server (used by the benchmark baselines)."""
        return ["ssh", "-i", key or self.baseline_client_key, "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", f"{self.user}@127.0.0.1"]
