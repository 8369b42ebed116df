"""A network namespace joined to the host by a veth pair: a second machine on a private
link, for tests that need a real interface to configure or a link to rate-limit."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from agent.runcmd import run
from .procs import start_daemon, stop_process
from .sshd import Sshd


@dataclass
class VethNamespace:
    ns: str
    host_if: str                    # the host's end (at most 15 characters)
    ns_if: str                      # the end inside the namespace
    host_cidr: str                  # e.g. 10.77.0.1/24
    ns_cidr: str | None = None      # None: the inside end stays unconfigured and down

    def up(self) -> "VethNamespace":
        run(["ip", "netns", "add", self.ns])
        try:
            run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                 "netns", self.ns])
            run(["ip", "addr", "add", self.host_cidr, "dev", self.host_if])
            run(["ip", "link", "set", self.host_if, "up"])
            if self.ns_cidr:
                run(["ip", "-n", self.ns, "addr", "add", self.ns_cidr, "dev", self.ns_if])
                run(["ip", "-n", self.ns, "link", "set", self.ns_if, "up"])
                run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        except Exception:
            self.down()
            raise
        return self

    def down(self) -> None:
        run(["ip", "link", "del", self.host_if], check=False)
        run(["ip", "netns", "del", self.ns], check=False)

    def __enter__(self) -> "VethNamespace":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


class ShapedServer:
    """sshd in a network namespace, reached over a veth pair rate-limited with tc tbf.

    The agent -> server direction (the one the images travel) is limited to rate_mbit; the
    server is the testbed's sshd (its keys, forced-command receiver and config), listening on
    port 22 inside the namespace. sshd_kwargs go to Sshd (receiver_root, workdir, baseline_key).
    """

    def __init__(self, rate_mbit: int, **sshd_kwargs):
        tag = f"{os.getpid() % 10000}"
        self.ns = f"ccest{tag}"
        self.host_if, self.ns_if = f"cce{tag}a", f"cce{tag}b"
        n = os.getpid() % 250 + 1
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.rate_mbit = rate_mbit
        self.sshd = Sshd(**sshd_kwargs)
        self.proc = None
        self.link: VethNamespace | None = None

    def start(self) -> "ShapedServer":
        self.link = VethNamespace(self.ns, self.host_if, self.ns_if, f"{self.host_ip}/30",
                                  f"{self.ns_ip}/30").up()
        # Agent -> server: the direction the images travel. 100 ms of queue keeps TCP busy.
        run(["tc", "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", f"{self.rate_mbit}mbit",
             "burst", "256kb", "latency", "100ms"])
        # Keys, authorized_keys and a config from the testbed sshd; then the same server
        # listening inside the namespace.
        self.sshd.start()
        cfg = open(self.sshd.p("sshd_config")).read()
        cfg = cfg.replace(f"Port {self.sshd.port}", "Port 22").replace(
            "ListenAddress 127.0.0.1", f"ListenAddress {self.ns_ip}").replace(
            f"PidFile {self.sshd.p('sshd.pid')}", f"PidFile {self.sshd.p('sshd-ns.pid')}")
        with open(self.sshd.p("sshd_ns_config"), "w") as f:
            f.write(cfg)
        host_pub = open(self.sshd.p("host_ed25519.pub")).read().split()
        with open(self.sshd.known_hosts, "a") as f:
            f.write(f"{self.ns_ip} {host_pub[0]} {host_pub[1]}\n")
        log = self.sshd.p("sshd-ns.log")
        self.proc = start_daemon(["ip", "netns", "exec", self.ns, shutil.which("sshd") or "/usr/sbin/sshd",
                                  "-D", "-e", "-f", self.sshd.p("sshd_ns_config")],
                                 "sshd in the namespace", (self.ns_ip, 22), log, output=log)
        return self

    def url(self, path: str) -> str:
        return f"ssh://{self.sshd.user}@{self.ns_ip}{path}"

    def ssh_argv(self) -> list[str]:
        """OpenSSH client argv to the server in the namespace (the benchmark's baselines)."""
        return ["ssh", "-i", self.sshd.baseline_client_key, "-o", f"UserKnownHostsFile={self.sshd.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{self.sshd.user}@{self.ns_ip}"]

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.sshd.stop()
        if self.link is not None:
            self.link.down()
        shutil.rmtree(self.sshd.workdir, ignore_errors=True)

    def __enter__(self) -> "ShapedServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
