import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.testbed.files import sha256_of  # noqa: F401  (tests import it from here)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def is_root() -> bool:
    return os.geteuid() == 0


# Modules whose tests share session-scoped set-up (one QEMU boot asserted on by several
# modules): under xdist they must run on one worker, or each worker would boot again.
SHARED_SETUP = {
    "tests/vm/test_headless.py": "vm-shared-boots",
    "tests/vm/test_guest_discovery.py": "vm-shared-boots",
}

# What the costly groups took in `make test` here (seconds, both workers busy; --durations
# shows them): only their order matters. Unlisted groups take under a minute or two each.
GROUP_COST = {
    "vm-shared-boots": 900,
    "tests/vm/test_whole_story.py": 800,
    "tests/vm/test_wave.py": 700,
    "tests/vm/test_lvm_used.py": 230,
    "tests/vm/test_iscsi.py": 560,
    "tests/vm/test_multipath.py": 410,
    "tests/vm/test_resume_reboot.py": 390,
    "tests/vm/test_nfs.py": 250,
    "tests/integration/test_used_mode.py": 250,
    "tests/integration/test_convert_md.py": 245,
    "tests/integration/test_resume_multi.py": 190,
    "tests/integration/test_resume.py": 130,
    "tests/vm/test_tui_serial.py": 120,
    "tests/integration/test_convert.py": 110,
    "tests/integration/test_finish_kills.py": 110,
    "tests/integration/test_capture.py": 100,
    "tests/integration/test_wave_placement.py": 100,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # `make test` runs the integration and vm tiers on two xdist workers with
    # --dist loadgroup: a module's tests stay on one worker (its module fixtures are built
    # once), and the modules of SHARED_SETUP share one. tryfirst: xdist's worker reads the
    # xdist_group marks in its own pytest_collection_modifyitems (not trylast in xdist 3.8),
    # which otherwise ran before this one and saw none: every test was its own group.
    for item in items:
        module = os.path.relpath(str(item.path), REPO)
        item.add_marker(pytest.mark.xdist_group(SHARED_SETUP.get(module, module)))
    # Longest groups first (with --no-loadscope-reorder, xdist hands out groups in this order,
    # the next to whichever worker is free): the run then ends on short groups instead of one
    # worker booting the whole story while the other idles.
    items.sort(key=lambda it: -GROUP_COST.get(SHARED_SETUP.get(os.path.relpath(str(it.path), REPO),
                                                               os.path.relpath(str(it.path), REPO)), 0))
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (loop devices, sshd, mounts)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """`make test` (and so CI) installs every tool and builds the ISO first: there, a skip
    ("tgtd not installed", "no ISO") can only mean the set-up broke, so it fails instead of
    hiding the tests it skipped. Plain pytest runs keep their skips."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("COLDCLONE_NO_SKIP") == "1" and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"skipped, but COLDCLONE_NO_SKIP=1 (make test) requires every test to run: "
                        f"{reason}")


def coldclone(*args, timeout=300, env=None):
    """Run the real `coldclone` console script; return CompletedProcess (text). env: extra
    variables on top of ours."""
    return subprocess.run([os.path.join(BIN, "coldclone"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env} if env else None)


@pytest.fixture(scope="session")
def sshd():
    """A real OpenSSH sshd on 127.0.0.1 with a forced-command coldclone-receive key."""
    from tests.testbed.sshd import Sshd

    s = Sshd().start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


@pytest.fixture
def rx_dir(sshd, request):
    """A fresh directory inside the sshd receiver's confined root, owned by its user."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    d = os.path.join(sshd.receiver_root, f"{safe}-{hashlib.sha1(request.node.name.encode()).hexdigest()[:6]}")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    shutil.chown(d, sshd.user)
    return d


def ssh_args(sshd, path=""):
    return ["--to", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{path}", "--identity", sshd.client_key,
            "--known-hosts", sshd.known_hosts]
