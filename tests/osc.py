"""The real `openstack` client's argument parsers (python-openstackclient, a test dependency):
a launch plan's commands are checked by exactly what would read them."""

from __future__ import annotations

import argparse
import contextlib
import io
from importlib.metadata import entry_points


def parse(argv: list[str] | tuple[str, ...]) -> argparse.Namespace:
    """`openstack WORDS... OPTIONS...` parsed by that command's own parser (found as the client
    finds it: the entry point named after the command's words, the newest API version's);
    AssertionError with the client's own message if it would refuse it."""
    assert argv and argv[0] == "openstack", argv
    words = list(argv[1:])
    for n in range(len(words), 0, -1):
        name = "_".join(words[:n])
        found = sorted((ep for ep in entry_points(name=name) if ep.group.startswith("openstack.")),
                       key=lambda ep: ep.group)
        if not found:
            continue
        command = found[-1].load()(None, None)
        parser = command.get_parser("openstack " + " ".join(words[:n]))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                return parser.parse_args(words[n:])
        except SystemExit:
            raise AssertionError(f"openstack refuses {list(argv)}: {err.getvalue().strip().splitlines()[-1]}") from None
    raise AssertionError(f"no openstack command in {list(argv)}")
