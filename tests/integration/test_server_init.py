"""`coldclone-server init` sets a conversion server up in one command, and again without harm.

A fresh root and a fresh service user; init twice (the second run changes nothing: same key,
same pin, same line in authorized_keys, files untouched); then a real sshd with the
distribution's checks (StrictModes, the user's own ~/.ssh/authorized_keys) and a headless
capture of a real disk with exactly what init printed (its cmdline= words; identity= and
hostkey= are in them). Then --rotate-key: the old key is refused, the new one works.
"""

import os
import shutil
import socket
import tempfile

import pytest

from agent.runcmd import run
from tests.integration.test_headless import headless
from tests.conftest import sha256_of
from tests.testbed import synthdisk
from tests.testbed.convserver import ConversionServer, remove_user, server_cli

pytestmark = pytest.mark.root
MiB = 1 << 20
USER = "ccw-init"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("init-src") / "server.img")
    with synthdisk.on_loop(img, size=96 * MiB, table="gpt", files_mb=12, remnant_mb=4) as (loop, _):
        yield loop


@pytest.fixture(scope="module")
def server():
    remove_user(USER)      # a fresh user, as on a new machine
    # where a service user can reach its root (pytest's own tmp is root's alone)
    work = tempfile.mkdtemp(prefix="ccw-init-", dir="/var/tmp")
    os.chmod(work, 0o755)
    srv = ConversionServer("ccw-init", USER, work)
    yield srv
    srv.stop()
    remove_user(USER)
    shutil.rmtree(work, ignore_errors=True)


def test_init_refuses_a_root_its_user_cannot_reach(tmp_path):
    """pytest's tmp is closed to other users: init says so instead of leaving a server that fails
    every capture with 'Permission denied'."""
    srv = ConversionServer("ccw-init", USER, str(tmp_path / "closed"))
    os.makedirs(srv.workdir)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", srv.p("host_ed25519")])
    r = server_cli("init", "--root", srv.root, "--user", USER, "--host-key", srv.p("host_ed25519.pub"),
                   "--keys", srv.keys)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{USER} cannot write into {os.path.realpath(srv.root)}" in r.stderr
    assert "chmod o+x the parents" in r.stderr


def files_of(srv, home):
    paths = [os.path.join(home, ".ssh/authorized_keys"), srv.init.identity, srv.init.identity + ".pub"]
    return {p: (open(p, "rb").read(), os.stat(p).st_mtime_ns, oct(os.stat(p).st_mode)) for p in paths}


def test_init_twice_changes_nothing_then_a_capture_with_what_it_printed(server, source):
    import pwd

    first = server.set_up()
    home = pwd.getpwnam(USER).pw_dir
    text = server.inits[-1].stdout
    for step in ("user ccw-init: created", "root ", "agent key ", "authorized_keys: written"):
        assert step in text, text
    assert first.hostkey == run(["ssh-keygen", "-lf", server.p("host_ed25519.pub")]).stdout.split()[1]
    assert first.cmdline == (f"coldclone.server=ssh://{USER}@127.0.0.1:{server.port}/ "
                             f"coldclone.hostkey={first.hostkey} coldclone.identity={first.identity}")
    before = files_of(server, home)
    line = open(os.path.join(home, ".ssh/authorized_keys")).read()
    assert line.startswith(f'command="{os.path.dirname(os.sys.executable)}/coldclone-receive --root '
                           f'{os.path.realpath(server.root)}",restrict ssh-ed25519 ')
    assert line.rstrip().endswith(" coldclone-agent")

    second = server.set_up()
    assert (second.identity, second.hostkey, second.cmdline) == (first.identity, first.hostkey, first.cmdline)
    again = server.inits[-1].stdout
    assert "created" not in again and "written" not in again and "replaced" not in again, again
    assert again.count("unchanged") >= 4, again
    assert files_of(server, home) == before       # not rewritten: same bytes, same mtime, same mode

    server.start()
    name = os.path.basename(source.dev)
    src_before = sha256_of(source.dev)
    r = headless(f"{first.cmdline} coldclone.disks={name} coldclone.capture_id=init-1 "
                 f"coldclone.calibrate=0 coldclone.iscsi=off coldclone.wave=first-wave")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "COLDCLONE-HEADLESS-OK capture_id=init-1" in r.stdout
    cap = os.path.join(server.root, "init-1")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, os.path.join(cap, f"{name}.qcow2")])
    assert sha256_of(source.dev) == src_before
    # the receiver ran as the service user, confined to the root
    assert os.stat(os.path.join(cap, "manifest.json")).st_uid == pwd.getpwnam(USER).pw_uid
    [st] = server.status()
    assert (st["capture_id"], st["state"], st["wave"], st["server"]) == (
        "init-1", "verified", "first-wave", socket.gethostname())
    assert st["done"] == st["size"] == source_size(source.dev)


def source_size(dev):
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def test_rotate_key_refuses_the_old_key(server, source, tmp_path):
    if server.proc is None:
        pytest.skip("needs the set-up of the test before")
    old = tmp_path / "old_key"
    old.write_bytes(open(server.init.identity, "rb").read())
    os.chmod(old, 0o600)
    rotated = server.set_up("--rotate-key")
    assert "agent key " in server.inits[-1].stdout and "replaced (--rotate-key)" in server.inits[-1].stdout
    assert rotated.identity == server.init.identity and rotated.hostkey == server.init.hostkey
    name = os.path.basename(source.dev)
    base = f"coldclone.disks={name} coldclone.calibrate=0 coldclone.iscsi=off"
    stale = rotated.cmdline.replace(rotated.identity, str(old))
    r = headless(f"{stale} {base} coldclone.capture_id=init-old")
    assert r.returncode == 3, r.stdout[-2000:]
    assert "refused key" in r.stdout and "authorized_keys" in r.stdout
    assert not os.path.exists(os.path.join(server.root, "init-old.partial"))
    r = headless(f"{rotated.cmdline} {base} coldclone.capture_id=init-new")
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.slow
def test_init_iso_bakes_the_key_and_the_pin(tmp_path):
    """`init --iso`: livecd/build.sh with IDENTITY= and HOSTKEY=, warm from the caches of
    $COLDCLONE_BUILD (or livecd/build): the ISO's root holds the agents' key and the pin, and the
    printed kernel command line needs neither. A few minutes: `pytest -m slow` (not in make test)."""
    warm = os.environ.get("COLDCLONE_BUILD") or os.path.join(os.path.dirname(__file__), "..", "..", "livecd", "build")
    if not os.path.isdir(os.path.join(warm, "cache")):
        pytest.skip(f"no ISO build caches in {warm} (make iso first)")
    build = tempfile.mkdtemp(prefix="ccw-iso-", dir="/var/tmp")
    work = tempfile.mkdtemp(prefix="ccw-isoinit-", dir="/var/tmp")
    os.chmod(work, 0o755)
    remove_user("ccw-iso")
    try:
        run(["cp", "-a", os.path.join(warm, "cache"), build])
        srv = ConversionServer("ccw-iso", "ccw-iso", work)
        os.makedirs(work, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", srv.p("host_ed25519")])
        env = {**os.environ, "COLDCLONE_BUILD": build}
        import subprocess
        r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "coldclone-server"), "init",
                            "--root", srv.root, "--user", "ccw-iso", "--address", "10.0.0.5",
                            "--host-key", srv.p("host_ed25519.pub"), "--keys", srv.keys, "--iso"],
                           capture_output=True, text=True, env=env, timeout=3600)
        assert r.returncode == 0, r.stdout + r.stderr
        out = {k: v for k, _, v in (line.partition("=") for line in r.stdout.splitlines()) if k in
               ("identity", "hostkey", "iso", "cmdline")}
        assert out["iso"] == os.path.join(build, "coldclone.iso") and os.path.getsize(out["iso"]) > 100 << 20
        assert out["cmdline"] == "coldclone.server=ssh://ccw-iso@10.0.0.5/"      # the rest is baked in
        run(["xorriso", "-osirrox", "on", "-indev", out["iso"], "-extract", "/live/filesystem.squashfs",
             str(tmp_path / "fs.squashfs")])
        baked = {}
        for name in ("identity", "hostkey"):
            baked[name] = run(["unsquashfs", "-cat", str(tmp_path / "fs.squashfs"), f"etc/coldclone/{name}"]).stdout
        assert baked["identity"] == open(out["identity"]).read()
        assert baked["hostkey"].strip() == out["hostkey"]
    finally:
        remove_user("ccw-iso")
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
