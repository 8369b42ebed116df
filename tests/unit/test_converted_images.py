"""The receiver that queues a conversion (--convert) says in its `complete` reply where the
converted images will be, and the agent's summary (headless) and the TUI's Done screen say it.
A receiver that converts nothing says nothing about it (an old agent sees the reply it knew)."""

import io
import json
import os

from agent import protocol as P
from agent.source.capture.session import CaptureResult
from agent.source.console import print_summary
from agent.manifest import Manifest
from agent.server.receive.receiver import Receiver
from tests.streams import capture_stream

MiB = 1 << 20


def _receive(root: str, convert: bool) -> list[dict]:
    data = os.urandom(P.DEFAULT_BLOCK_SIZE) + bytes(3 * P.DEFAULT_BLOCK_SIZE)
    stream = capture_stream("conv01", {"sda": data, "sdb": data})
    out = io.BytesIO()
    assert Receiver(root, out, convert=convert).run(io.BytesIO(stream)) == 0
    return [json.loads(l) for l in out.getvalue().splitlines()]


def test_complete_names_the_converted_images_when_the_receiver_converts(tmp_path):
    complete = _receive(str(tmp_path), convert=True)[-1]
    assert complete["event"] == "complete"
    cap = os.path.join(str(tmp_path), "conv01")
    assert complete["converted_images"] == [os.path.join(cap, "sda.kvm.qcow2"),
                                            os.path.join(cap, "sdb.kvm.qcow2")]
    reply = P.Reply.decode(json.dumps(complete).encode())
    assert reply.event == P.Event.COMPLETE and reply.converted_images == tuple(complete["converted_images"])


def test_complete_says_nothing_of_conversion_without_convert(tmp_path):
    complete = _receive(str(tmp_path), convert=False)[-1]
    assert complete["event"] == "complete" and "converted_images" not in complete
    assert P.Reply.decode(json.dumps(complete).encode()).converted_images == ()


def test_a_wrong_converted_images_field_is_noise_not_a_crash():
    r = P.Reply.decode(b'{"event":"complete","path":"/x","manifest":{},"converted_images":"/x/sda.kvm.qcow2"}')
    assert r.event == P.Event.NOISE and "converted_images" in r.text


def _result(converted: tuple[str, ...]) -> CaptureResult:
    return CaptureResult("cap-1", "ssh://rx@conv:22/srv", "/srv/cap-1", Manifest("cap-1", "complete", []),
                         30.0, 64 * MiB, 8 * MiB, 0, 64 * MiB, converted_images=converted)


def test_summary_and_done_screen_say_where_the_converted_image_will_be():
    res = _result(("/srv/cap-1/sda.kvm.qcow2",))
    buf = io.StringIO()
    print_summary(res, out=buf)
    text = buf.getvalue()
    assert "conversion queued on the conversion server (coldclone-convert); the KVM image will be:" in text
    assert "    /srv/cap-1/sda.kvm.qcow2\n" in text
    # the TUI's Done screen shows the same summary (CaptureResult.summary_lines), line for line
    assert text.splitlines() == res.summary_lines()


def test_summary_says_nothing_of_conversion_when_none_is_queued():
    buf = io.StringIO()
    print_summary(_result(()), out=buf)
    assert "conversion" not in buf.getvalue()
    assert not any("conversion" in l for l in _result(()).summary_lines())


def test_convert_engine_without_convert_is_refused(tmp_path):
    import subprocess

    from tests.conftest import BIN

    r = subprocess.run([os.path.join(BIN, "coldclone-receive"), "--root", str(tmp_path),
                        "--convert-engine", "fixups"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--convert-engine needs --convert" in r.stderr, r.stderr
    r = subprocess.run([os.path.join(BIN, "coldclone-receive"), "--root", str(tmp_path), "--convert",
                        "--convert-engine", "v2v"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'v2v'" in r.stderr, r.stderr
    assert not os.listdir(tmp_path)


def test_network_without_convert_is_refused_and_a_wrong_policy_named(tmp_path):
    import subprocess

    from tests.conftest import BIN

    rx = os.path.join(BIN, "coldclone-receive")
    r = subprocess.run([rx, "--root", str(tmp_path), "--network", "keep"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--network needs --convert" in r.stderr, r.stderr
    r = subprocess.run([rx, "--root", str(tmp_path), "--convert", "--network", "static"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'static'" in r.stderr, r.stderr
    r = subprocess.run([os.path.join(BIN, "coldclone-convert"), str(tmp_path), "--network", "static"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'static'" in r.stderr, r.stderr
    assert not os.listdir(tmp_path)


def test_server_init_puts_the_network_policy_in_the_forced_command():
    """coldclone-server init --convert --network keep: the authorized_keys line runs the receiver
    with --network keep (the default, dhcp, is left out as --convert-engine's default is)."""
    from agent.server.admin.init import Setup, forced_command

    keep = forced_command(Setup(root="/srv/coldclone", user="cc", convert=True, convert_engine="fixups",
                                network="keep"))
    assert keep.split()[1:] == ["--root", "/srv/coldclone", "--convert", "--convert-engine", "fixups",
                                "--network", "keep"]
    assert "--network" not in forced_command(Setup(root="/srv/coldclone", user="cc", convert=True))
