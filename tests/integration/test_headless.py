"""`coldclone headless` on this host: the kernel command line drives a real capture.

The same runner the live ISO starts (tests/vm boot it for real); here the command line
comes from --cmdline, the source is a loop device and the server a real sshd on 127.0.0.1.
"""

import json
import os
import re
import socket

import pytest

from agent.runcmd import run
from agent.testbed import synthdisk
from agent.testbed.loop import LoopDevice
from tests.conftest import coldclone, sha256_of

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("hl") / "server.img")
    synthdisk.build(img, size=256 * MiB, table="gpt", files_mb=24, remnant_mb=4)
    with LoopDevice(img) as loop:
        yield loop


def server_words(sshd, rx_dir, **extra):
    words = {
        "server": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{rx_dir}",
        "identity": sshd.client_key,
        "hostkey": sshd.fingerprint,
        "calibrate": "0",
        "progress": "1",
        "iscsi": "off",
    }
    words.update(extra)
    return " ".join(f"coldclone.{k}" if v is None else f"coldclone.{k}={v}" for k, v in words.items())


def headless(cmdline, timeout=300):
    return coldclone("headless", "--include-loop", "--baked-root", "/nonexistent",
                     "--cmdline", f"boot=live quiet {cmdline}", timeout=timeout)


def json_block(out: str, tag: str):
    m = re.search(rf"^COLDCLONE-{tag}-JSON-BEGIN\n(.*?)^COLDCLONE-{tag}-JSON-END$", out, re.M | re.S)
    assert m, f"no {tag} block in:\n{out[-2000:]}"
    return json.loads(m.group(1))


def test_headless_capture_equals_source(sshd, rx_dir, source, tmp_path):
    before = sha256_of(source.dev)
    name = os.path.basename(source.dev)
    marker = tmp_path / "pre-ran"
    hook = tmp_path / "pre.sh"
    hook.write_text(f'echo "phase=$COLDCLONE_PHASE" > {marker}\necho hello from the hook\n')
    r = headless(server_words(sshd, rx_dir, disks=name, capture_id="hl-1", pre=str(hook)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COLDCLONE-HEADLESS-OK capture_id=hl-1" in r.stdout
    assert marker.read_text().strip() == "phase=pre"
    assert "coldclone:   pre: hello from the hook" in r.stdout
    inv = json_block(r.stdout, "INVENTORY")
    chosen = [d["name"] for d in inv["disks"] if d["capture_default"]]
    assert chosen == [name]
    qcow2 = os.path.join(rx_dir, "hl-1", f"{name}.qcow2")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, qcow2])
    assert sha256_of(source.dev) == before
    manifest = json.load(open(os.path.join(rx_dir, "hl-1", "manifest.json")))
    captured = [d for d in manifest["source"]["inventory"]["disks"] if d["capture_default"]]
    assert [d["name"] for d in captured] == [name]
    assert "on_done=poweroff" in r.stdout  # said, but not done: no --live on this host


def test_estimate_only_captures_nothing(sshd, rx_dir, source):
    name = os.path.basename(source.dev)
    r = headless(f"coldclone.estimate_only coldclone.disks={name} coldclone.iscsi=off coldclone.calibrate=0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing captured" in r.stdout and "COLDCLONE-HEADLESS-OK capture_id=-" in r.stdout
    assert json_block(r.stdout, "INVENTORY")["disks"]
    assert os.listdir(rx_dir) == []


def test_typo_on_the_command_line_fails_plainly(sshd, rx_dir, source, tmp_path):
    fail_log = tmp_path / "fail.log"
    hook = tmp_path / "fail.sh"
    hook.write_text(f'echo "$COLDCLONE_EXIT $COLDCLONE_MESSAGE" > {fail_log}\n')
    words = server_words(sshd, rx_dir, disks=os.path.basename(source.dev)).replace("coldclone.server=", "coldclone.sever=")
    r = headless(words + f" coldclone.fail={hook}")
    assert r.returncode == 2
    assert "coldclone: error: " in r.stdout
    assert "unknown kernel command line key coldclone.sever; did you mean coldclone.server?" in r.stdout
    assert re.search(r"^COLDCLONE-HEADLESS-FAILED exit=2: ", r.stdout, re.M)
    # the key was wrong, so the config (and its fail hook) never existed: nothing ran
    assert not fail_log.exists()
    assert os.listdir(rx_dir) == []


def test_unreachable_server_fails_plainly_and_runs_the_fail_hook(sshd, rx_dir, source, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again: nothing listens there
    fail_log = tmp_path / "fail.log"
    hook = tmp_path / "fail.sh"
    hook.write_text(f'echo "$COLDCLONE_EXIT" > {fail_log}\n')
    words = server_words(sshd, rx_dir, disks=os.path.basename(source.dev), fail=str(hook), timeout="5")
    words = words.replace(f"127.0.0.1:{sshd.port}", f"127.0.0.1:{port}")
    r = headless(words)
    assert r.returncode == 3, r.stdout + r.stderr
    assert re.search(r"^COLDCLONE-HEADLESS-FAILED exit=3: .*127\.0\.0\.1", r.stdout, re.M), r.stdout
    assert fail_log.read_text().strip() == "3"


def test_unknown_disk_and_wrong_host_key_are_refused(sshd, rx_dir, source):
    r = headless(server_words(sshd, rx_dir, disks="sdzz"))
    assert r.returncode == 2 and "coldclone.disks=: selected disk sdzz is not a known disk" in r.stdout
    wrong = "SHA256:" + "A" * 43
    r = headless(server_words(sshd, rx_dir, disks=os.path.basename(source.dev), hostkey=wrong))
    assert r.returncode == 3, r.stdout
    assert "HOST KEY MISMATCH" in r.stdout and f"coldclone.hostkey={sshd.fingerprint}" in r.stdout
    assert os.listdir(rx_dir) == []


def test_failing_pre_hook_stops_before_anything_is_sent(sshd, rx_dir, source, tmp_path):
    hook = tmp_path / "pre.sh"
    hook.write_text("echo 'no VLAN 12 on this NIC' >&2\nexit 7\n")
    r = headless(server_words(sshd, rx_dir, disks=os.path.basename(source.dev), pre=str(hook)))
    assert r.returncode == 2
    assert "the pre hook" in r.stdout and "exit 7" in r.stdout and "no VLAN 12 on this NIC" in r.stdout
    assert os.listdir(rx_dir) == []
