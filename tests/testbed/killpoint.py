"""Kill the receiver at an exact step: the forced command of the kill-matrix sshd.

`python -m tests.testbed.killpoint SPEC RECEIVER ARGS...` runs RECEIVER ARGS... as it is, or,
when the JSON file SPEC names a step, under strace with a fault injected there (strace's own
fault injection: the product carries no test hook):

    {"syscalls": "unlinkat", "path": "loop3.journal"}              SIGKILL on entering it
    {"syscalls": "kill"}                                            (any path: the first such call)
    {"syscalls": "openat", "path": "/abs/x.qcow2", "delay": 5}     every such call waits 5 s

`path` is matched as the receiver passes it (strace -P): the receiver names its files relative
to the capture directory's fd, so a bare name picks that one file of that one step. SIGKILL on
syscall entry, with the call itself suppressed: the process dies exactly before the step, as
a kill -9 or a power cut there would leave it. A delay (strace -f) also holds the receiver's
children (qemu-nbd, qemu-img) in a step while the test kills the process tree.
"""

from __future__ import annotations

import json
import os
import sys


def strace_argv(spec: dict) -> list[str]:
    """A kill follows the receiver's main thread only (the finish runs there; its children, qemu-nbd
    and qemu-img, are never hit by mistake); a delay follows every process (it holds a child)."""
    calls = spec["syscalls"]
    if "delay" in spec:
        action = f"inject={calls}:delay_enter={int(spec['delay'] * 1e6)}"
    else:
        action = f"inject={calls}:error=ENOENT:signal=KILL"
    # (not --seccomp-bpf: with it, strace 6.1 injects the error but not the signal on some calls)
    return (["strace"] + (["-f"] if "delay" in spec else []) + ["-qq", "-e", "signal=none", "-o", "/dev/null",
            "-e", f"trace={calls}"] + (["-P", spec["path"]] if spec.get("path") else []) + ["-e", action, "--"])


def main() -> None:
    spec_file, argv = sys.argv[1], sys.argv[2:]
    try:
        with open(spec_file) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        spec = None
    if spec:
        os.chdir("/")         # a relative -P name must not resolve to a file in strace's cwd
        argv = strace_argv(spec) + argv
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
