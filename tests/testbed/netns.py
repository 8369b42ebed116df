"""A network namespace joined to the host by a veth pair: a second machine on a private
link, for tests that need a real interface to configure or a link to rate-limit."""

from __future__ import annotations

from dataclasses import dataclass

from agent.runcmd import run


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
