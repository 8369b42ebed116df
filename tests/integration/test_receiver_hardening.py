"""The receiver under attack and in bad luck, with real parts: the forced-command sshd, tmpfs
filesystems that fill up, a receiver killed with -9, a session whose parent vanishes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from agent import protocol as P
from tests.integration.test_refusals import raw_session, send_and_collect, tmpfs  # noqa: F401 (fixture)
from tests.streams import capture_stream, disk_records
from tests.testbed.receiver import REPO, finish, receiver_argv, receiver_env, run_receiver, start_receiver
from tests.testbed.sshd import Sshd

pytestmark = pytest.mark.root
MiB = 1 << 20
BS = P.DEFAULT_BLOCK_SIZE


def the_error(replies):
    errs = [r for r in replies if r.get("event") == "error"]
    assert len(errs) == 1, replies
    assert not any(r.get("event") == "complete" for r in replies)
    return errs[0]


def victim_data(size=8 * MiB):
    data = bytearray(size)
    data[MiB:3 * MiB] = os.urandom(2 * MiB)
    data[6 * MiB:6 * MiB + 5000] = b"victim" * 833 + b"xx"
    return bytes(data)


def test_nesting_attack_over_sshd(sshd, rx_dir, tmp_path):
    """A second session asks for ssh://host/<victim>.partial with capture id manifest.json (and
    variants): every one is refused, and the victim's capture completes with a verified qcow2."""
    data = victim_data()
    blob = capture_stream("victim", {"sda": data})
    cut = len(blob) // 2
    victim = raw_session(sshd, rx_dir)
    try:
        victim.send(blob[:cut])
        ready = victim.pump.queue.get(timeout=30)
        assert ready["event"] == "ready", ready
        partial = os.path.join(rx_dir, "victim.partial")
        attacks = [
            (partial, "manifest.json", "outside_root"),
            (partial, "evil", "outside_root"),
            (rx_dir, "manifest.json", "bad_name"),
            (rx_dir, "victim.partial", "bad_name"),
            (os.path.join(partial, "sub"), "x", "outside_root"),
        ]
        for path, cid, code in attacks:
            replies, status = send_and_collect(sshd, path, capture_stream(cid, {"sda": os.urandom(BS)}))
            err = the_error(replies)
            assert err["code"] == code, (path, cid, err)
            assert status != 0
        # (the qcow2 written directly, and the private socket of its qemu-nbd while the capture runs)
        assert sorted(os.listdir(partial)) == [".coldclone-receive.lock", ".sda.nbd", "sda.journal", "sda.qcow2"]
        victim.send(blob[cut:])
        victim.close_write()
        replies = []
        while (msg := victim.pump.queue.get(timeout=120)) is not None:
            replies.append(msg)
        assert [r["event"] for r in replies] == ["disk_ok", "complete"], replies
    finally:
        victim.close()
    cap = os.path.join(rx_dir, "victim")
    assert sorted(os.listdir(cap)) == ["manifest.json", "sda.qcow2"]
    src = tmp_path / "victim.raw"
    src.write_bytes(data)
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(src),
                    os.path.join(cap, "sda.qcow2")], check=True)
    # And once complete, the capture is no root either.
    replies, _ = send_and_collect(sshd, cap, capture_stream("later", {"sda": os.urandom(BS)}))
    assert the_error(replies)["code"] == "outside_root"
    assert sorted(os.listdir(cap)) == ["manifest.json", "sda.qcow2"]


@pytest.fixture(scope="module")
def idle_sshd():
    s = Sshd(receiver_args="--idle-timeout 3").start()
    yield s
    s.stop()
    shutil.rmtree(s.workdir, ignore_errors=True)


def test_the_agents_environment_does_not_reach_the_receivers_python(tmp_path):
    """Issue 19: with `AcceptEnv *` in sshd, `SendEnv=PYTHONPATH` ran the agent's own code inside
    the receiver (a sitecustomize, an `agent` package shadowing ours). The installed launcher runs
    Python isolated: the same session through the real sshd gets the real receiver's answer and
    none of the planted code runs."""
    evil = tmp_path / "evil"
    (evil / "agent").mkdir(parents=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(marks, 0o777)
    plant = f"open({str(marks / 'ran')!r} + __name__, 'w').write('planted code ran')\n"
    (evil / "sitecustomize.py").write_text(plant)
    (evil / "agent" / "__init__.py").write_text(plant)
    for p in (evil, evil / "agent", evil / "sitecustomize.py", evil / "agent" / "__init__.py"):
        os.chmod(p, 0o755)
    with Sshd(accept_env=True, baseline_key=True) as s:
        os.makedirs(os.path.join(s.receiver_root, "x"), exist_ok=True)
        shutil.chown(os.path.join(s.receiver_root, "x"), s.user)
        probe = P.preamble() + P.Hello(capture_id=None, probe=True, disks=("sda",)).encode() + P.Abort("done").encode()
        env = {**os.environ, "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "sitecustomize.py"),
               "PYTHONINSPECT": "1"}
        r = subprocess.run(["ssh", *ssh_client_opts(s), "-p", str(s.port), "-o", "SendEnv=PYTHON*",
                            f"{s.user}@127.0.0.1"], input=probe, capture_output=True, env=env, timeout=60)
        # The control: sshd does hand the variable over (a plain key, no forced command).
        seen = subprocess.run([*s.ssh_argv(), "-o", "SendEnv=PYTHONPATH", "echo $PYTHONPATH"],
                              capture_output=True, text=True, env=env, timeout=60)
    assert seen.stdout.strip() == str(evil), seen.stderr
    replies = [json.loads(line) for line in r.stdout.splitlines()]
    assert replies and replies[0]["event"] == "ready" and replies[0]["probe"] is True, (r.stdout, r.stderr)
    assert os.listdir(marks) == [], "the agent's PYTHONPATH ran code in the receiver"
    assert r.returncode == 0, r.stderr


def receivers_of(s: Sshd) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"coldclone-receive --root {s.receiver_root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def ssh_client_opts(s: Sshd) -> list[str]:
    return ["-i", s.client_key, "-o", f"UserKnownHostsFile={s.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]


def test_idle_session_ends_within_the_timeout(idle_sshd):
    """A session that sends nothing at all: the receiver ends it after --idle-timeout (3 s)."""
    conn = raw_session(idle_sshd)
    try:
        t0 = time.monotonic()
        replies = []
        while (msg := conn.pump.queue.get(timeout=30)) is not None:
            replies.append(msg)
        took = time.monotonic() - t0
        err = the_error(replies)
        assert err["code"] == "session_ended" and "--idle-timeout" in err["message"], err
        assert conn.exit_status() == 1
    finally:
        conn.close()
    assert 2.5 < took < 8, took
    print(f"idle session ended after {took:.1f} s (--idle-timeout 3)")


def test_scp_attempt_with_the_key_ends_within_the_timeout(idle_sshd, tmp_path):
    """Real scp (legacy protocol: it waits for the far end to speak first) with the capture key."""
    f = tmp_path / "file"
    f.write_bytes(b"x" * 1000)
    t0 = time.monotonic()
    r = subprocess.run(["scp", "-O", "-P", str(idle_sshd.port), *ssh_client_opts(idle_sshd), str(f),
                        f"{idle_sshd.user}@127.0.0.1:/tmp/scp-target"], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert took < 10, (took, r.stderr)
    assert not os.path.exists("/tmp/scp-target")
    # sftp speaks first: refused at once as not a coldclone stream.
    t0 = time.monotonic()
    r = subprocess.run(["sftp", "-P", str(idle_sshd.port), *ssh_client_opts(idle_sshd), "-b", "-",
                        f"{idle_sshd.user}@127.0.0.1"], input="ls\n", capture_output=True, text=True, timeout=60)
    took_sftp = time.monotonic() - t0
    assert r.returncode != 0 and took_sftp < 10
    deadline = time.monotonic() + 10
    while receivers_of(idle_sshd) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert receivers_of(idle_sshd) == []
    assert os.listdir(idle_sshd.receiver_root) == []
    print(f"scp attempt ended after {took:.1f} s, sftp after {took_sftp:.1f} s")


def test_disk_full_while_writing_the_image_leaves_nothing(tmpfs):  # noqa: F811
    """The qcow2 does not fit (no estimate, so no preflight): qemu-nbd's ENOSPC comes back as the
    full disk, named, and the half-written qcow2 is gone, so the space is given back for a retry.
    (Before issue 21 the raw file fitted and its conversion did not: the same assertions.)"""
    root = tmpfs("size=16m,mode=0755")
    data = bytearray(20 * MiB)
    data[MiB:19 * MiB] = os.urandom(18 * MiB)
    run = run_receiver(root, capture_stream("conv", {"sda": bytes(data)}), timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    err = run.error
    assert err["code"] == "disk_full" and "qcow2" in err["message"], err
    partial = os.path.join(root, "conv.partial")
    assert os.listdir(partial) == ["failure.json"], os.listdir(partial)
    assert json.load(open(os.path.join(partial, "failure.json")))["code"] == "disk_full"
    st = os.statvfs(root)
    assert st.f_bfree * st.f_frsize > 15 * MiB


def test_space_preflight_refuses_up_front(tmpfs):  # noqa: F811
    root = tmpfs("size=16m,mode=0755")
    run = run_receiver(root, capture_stream("pre", {"sda": os.urandom(BS)}, data_estimates={"sda": 64 * MiB}))
    err = run.error
    assert err["code"] == "disk_full", err
    msg = err["message"]
    # one copy: the qcow2 (the data and its metadata), no raw file beside it any more
    assert "refused disk sda: it needs about 66.0 MiB (qcow2 image 66.0 MiB," in msg
    assert "are free in " + root in msg
    assert os.listdir(os.path.join(root, "pre.partial")) == ["failure.json"]
    # Within the space it fits, the same capture goes through.
    ok = run_receiver(root, capture_stream("fits", {"sda": os.urandom(BS)}, data_estimates={"sda": 4 * MiB}))
    assert ok.returncode == 0, ok.replies


def half_capture(capture_id: str) -> bytes:
    """HELLO, DISK and a few MiB of DATA: a capture in full swing (no END, no FINISH)."""
    data = os.urandom(4 * MiB)
    parts = []
    w = P.StreamWriter(parts.append)
    w.hello(P.Hello(capture_id=capture_id, disks=("sda",)))
    w.disk(P.DiskHeader(name="sda", size=64 * MiB))
    parts += disk_records(data)[0]
    return b"".join(parts)


def wait_for_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def gc(root):
    r = subprocess.run(receiver_argv(root, "--gc"), capture_output=True, text=True, env=receiver_env(), cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_gc_cleans_a_dead_receivers_partial_and_never_a_live_one(tmp_path):
    root = str(tmp_path)
    live = start_receiver(root)
    dead = start_receiver(root)
    try:
        for proc, cid in ((live, "live"), (dead, "dead")):
            proc.stdin.write(half_capture(cid))
            proc.stdin.flush()
        for cid in ("live", "dead"):
            wait_for_file(os.path.join(root, f"{cid}.partial", "sda.qcow2"))
        time.sleep(0.5)
        dead.kill()
        dead.wait()
        out = gc(root)
        assert f"live     {root}/live.partial: a running receiver holds its lock" in out, out
        assert (f"dead     {root}/dead.partial: receiver pid {dead.pid} is gone; cleaned: .sda.nbd, sda.journal, "
                f"sda.qcow2 removed") in out, out
        assert sorted(os.listdir(os.path.join(root, "live.partial"))) == [".coldclone-receive.lock", ".sda.nbd",
                                                                          "sda.journal", "sda.qcow2"]
        assert os.listdir(os.path.join(root, "dead.partial")) == ["failure.json"]
        failure = json.load(open(os.path.join(root, "dead.partial", "failure.json")))
        assert failure["code"] == "receiver_died" and str(dead.pid) in failure["error"]
        assert "failed   " + f"{root}/dead.partial" in gc(root)
        # The live capture is untouched and still works: ABORT ends it as usual.
        live.stdin.write(P.Abort("test over").encode())
        live.stdin.close()
        run = finish(live, time.monotonic(), 30)
        assert run.error["code"] == "aborted"
    finally:
        for p in (live, dead):
            if p.poll() is None:
                p.kill()
                p.wait()


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (its new parent, init here, reaps it when it likes)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_receiver_ends_when_its_parent_is_gone(tmp_path):
    """sshd's session process killed (stdin still open, nothing more comes): the receiver notices
    its parent is gone, records why and exits instead of waiting for --idle-timeout."""
    root = str(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
                               "print(p.pid, flush=True); p.wait()", *receiver_argv(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=receiver_env(), cwd=REPO)
    try:
        rx_pid = int(parent.stdout.readline())
        parent.stdin.write(half_capture("orphan"))
        parent.stdin.flush()
        wait_for_file(os.path.join(root, "orphan.partial", "sda.qcow2"))
        t0 = time.monotonic()
        parent.kill()
        parent.wait()
        while alive(rx_pid) and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert not alive(rx_pid), "receiver outlived its session"
        assert took < 5, took
        partial = os.path.join(root, "orphan.partial")
        # An ended session is an interruption: what arrived stays, journaled, to be resumed.
        assert sorted(os.listdir(partial)) == ["failure.json", "sda.journal", "sda.qcow2"]
        failure = json.load(open(os.path.join(partial, "failure.json")))
        assert failure["code"] == "session_ended" and "is gone" in failure["error"]
        assert failure["resumable"] is True
        print(f"receiver ended {took:.1f} s after its parent")
    finally:
        parent.stdin.close()


def test_sighup_ends_the_session_cleanly(tmp_path):
    root = str(tmp_path)
    proc = start_receiver(root)
    t0 = time.monotonic()
    proc.stdin.write(half_capture("hup"))
    proc.stdin.flush()
    # The journal is created just after the image: a SIGHUP between the two leaves nothing
    # journaled, and then rightly nothing to resume (seen once: only failure.json was left).
    # Data in the image: the disk is open and its records are being written.
    raw = os.path.join(root, "hup.partial", "sda.qcow2")
    wait_for_file(os.path.join(root, "hup.partial", "sda.journal"))
    deadline = time.monotonic() + 30
    while os.stat(raw).st_blocks == 0:
        assert time.monotonic() < deadline, "no data reached the image"
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    run = finish(proc, t0, 20)
    proc.stdin.close()
    assert run.error["code"] == "session_ended" and "SIGHUP" in run.error["message"]
    assert "Traceback" not in run.stderr
    # An ended session is an interruption: what arrived stays, journaled, to be resumed.
    assert sorted(os.listdir(os.path.join(root, "hup.partial"))) == ["failure.json", "sda.journal", "sda.qcow2"]
