"""The one capture job (agent/source/job.py): step order and failure paths, with the real capture of a
loop device to a file:// target (the receiver runs locally through a pipe) and real hook
scripts. The front ends only render these events; test_headless.py and test_capture.py drive
the same job through `coldclone headless` and `coldclone capture`."""

from __future__ import annotations

import json
import os
import threading

import pytest

from agent.source.capture import events as E
from agent.choices import IscsiMode, Mode
from agent.source.config import CaptureConfig
from agent.errors import CancelledError, SourceError, UsageError
from agent.source.job import CaptureJob, Captured, Estimated, HookError, Inventoried, Note, Prepared
from agent.runcmd import run
from tests.conftest import sha256_of
from tests.testbed import synthdisk

pytestmark = pytest.mark.root
MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = str(tmp_path_factory.mktemp("job") / "server.img")
    with synthdisk.on_loop(img, size=128 * MiB, table="gpt", files_mb=8, remnant_mb=2) as (loop, _):
        yield loop


def hook(tmp_path, name: str, log, body: str = "") -> str:
    """A real hook script that appends its phase and environment to a log."""
    path = tmp_path / f"{name}.sh"
    path.write_text(f'echo "{name} exit=$COLDCLONE_EXIT id=$COLDCLONE_CAPTURE_ID '
                    f'at=$COLDCLONE_LOCATION msg=$COLDCLONE_MESSAGE" >> {log}\n{body}')
    return str(path)


def job_config(tmp_path, source, **kw) -> CaptureConfig:
    out = tmp_path / "server"
    out.mkdir(exist_ok=True)
    base = dict(server=[f"file://{out}"], disks=[source.dev], iscsi=IscsiMode.OFF, calibrate=0.0,
                capture_id="job-1")
    base.update(kw)
    return CaptureConfig(**base)


def kinds(events) -> list[str]:
    """The order of the job's steps as its events show them (progress lines folded)."""
    out = []
    for ev in events:
        k = type(ev).__name__
        if isinstance(ev, Note):
            k = "Note:" + ev.text.split()[0]
        if not out or out[-1] != k:
            out.append(k)
    return out


def test_steps_run_in_order_and_the_capture_is_the_source(tmp_path, source):
    log = tmp_path / "hooks.log"
    before = sha256_of(source.dev)
    cfg = job_config(tmp_path, source, pre=hook(tmp_path, "pre", log),
                     # the post hook sees the finished capture where the receiver put it
                     post=hook(tmp_path, "post", log, 'test -f "$COLDCLONE_LOCATION/manifest.json"\n'),
                     fail=hook(tmp_path, "fail", log))
    events = []
    result = CaptureJob(cfg, notify=events.append, include_loop=True).run()

    order = kinds(events)
    # config, the pre hook, iSCSI (off), discovery, inspection, estimate, the capture, the post hook
    steps = [k for k in order if k not in ("Progress", "DiskStarted", "DiskFinished", "ServerNote")]
    assert steps == ["Note:configuration:", "Note:running", "Note:iSCSI:", "Inventoried", "Inspected", "Estimated", "CaptureStarted",
                     "CaptureFinished", "Captured", "Note:running"], order
    assert [ln.split()[0] for ln in log.read_text().splitlines()] == ["pre", "post"]
    assert f"at={result.location}" in log.read_text()

    inv = next(ev for ev in events if isinstance(ev, Inventoried))
    assert inv.sources == [source.dev]
    est = next(ev for ev in events if isinstance(ev, Estimated)).estimate
    assert [ev for ev in events if isinstance(ev, Captured)][0].result is result

    # The bytes: the image is the source, the source is untouched, the manifest has the
    # inventory and the estimate the job made.
    image = os.path.join(result.location, f"{os.path.basename(source.dev)}.qcow2")
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source.dev, image])
    assert sha256_of(source.dev) == before
    manifest = json.load(open(os.path.join(result.location, "manifest.json")))
    assert manifest["source"]["inventory"]["disks"], manifest["source"]
    assert manifest["estimate"]["total_seconds"] == est.total_seconds


def test_a_failing_pre_hook_stops_everything_and_runs_the_fail_hook(tmp_path, source):
    log = tmp_path / "hooks.log"
    cfg = job_config(tmp_path, source, pre=hook(tmp_path, "pre", log, "echo broken >&2; exit 3\n"),
                     fail=hook(tmp_path, "fail", log))
    events = []
    with pytest.raises(HookError, match=r"the pre hook .* failed \(exit 3\): broken"):
        CaptureJob(cfg, notify=events.append, include_loop=True).run()
    lines = log.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["pre", "fail"]
    assert "exit=2" in lines[1] and "pre hook" in lines[1]
    assert not any(isinstance(ev, (Inventoried, E.CaptureStarted)) for ev in events)
    assert os.listdir(tmp_path / "server") == []


def test_an_unknown_disk_is_refused_before_anything_is_sent(tmp_path, source):
    log = tmp_path / "hooks.log"
    cfg = job_config(tmp_path, source, disks=["sdzz"], fail=hook(tmp_path, "fail", log))
    with pytest.raises(UsageError, match="selected disk sdzz is not a known disk"):
        CaptureJob(cfg, include_loop=True).run()
    assert "fail exit=2" in log.read_text()
    assert os.listdir(tmp_path / "server") == []


def test_a_named_device_that_is_no_block_device(tmp_path, source):
    cfg = job_config(tmp_path, source, disks=["/dev/null"])
    with pytest.raises(SourceError, match="/dev/null is not a block device"):
        CaptureJob(cfg).run()


def test_cancel_mid_capture_aborts_and_the_server_discards(tmp_path, source):
    log = tmp_path / "hooks.log"
    cfg = job_config(tmp_path, source, fail=hook(tmp_path, "fail", log), mode=Mode.FULL,
                     chunk_size=64 << 10, capture_id="job-cancel")
    cancel = threading.Event()

    def notify(ev):
        if isinstance(ev, E.Progress) and ev.total_done > 4 * MiB:
            cancel.set()

    with pytest.raises(CancelledError):
        CaptureJob(cfg, notify=notify, cancel=cancel, include_loop=True).run()
    assert "fail exit=6" in log.read_text()
    partial = tmp_path / "server" / "job-cancel.partial"
    assert not (tmp_path / "server" / "job-cancel").exists()
    assert os.listdir(partial) == ["failure.json"]
    assert json.load(open(partial / "failure.json"))["code"] == "aborted"


def test_cancel_while_the_server_verifies_still_discards(tmp_path, source):
    """A stop after the last byte but before the receiver's verdict (it is reading back and
    converting) must still reach the receiver: nothing is marked complete while the agent
    reports "cancelled". (CI caught this: the stop used to arrive after FINISH.)"""
    cfg = job_config(tmp_path, source, mode=Mode.FULL, capture_id="job-late-cancel")
    cancel = threading.Event()

    def notify(ev):
        if isinstance(ev, E.DiskFinished):   # END sent: the receiver is verifying this disk
            cancel.set()

    with pytest.raises(CancelledError):
        CaptureJob(cfg, notify=notify, cancel=cancel, include_loop=True).run()
    assert not (tmp_path / "server" / "job-late-cancel").exists()
    partial = tmp_path / "server" / "job-late-cancel.partial"
    assert os.listdir(partial) == ["failure.json"], os.listdir(partial)
    assert json.load(open(partial / "failure.json"))["code"] == "aborted"


def test_steps_a_front_end_did_are_not_done_again(tmp_path, source):
    """The TUI's path: discovery and the estimate happened on its screens (here: none at
    all), the job captures what it was handed and posts no estimate of its own."""
    cfg = job_config(tmp_path, source, capture_id="job-prepared")
    events = []
    result = CaptureJob(cfg, notify=events.append,
                        prepared=Prepared(discovered=True, sources=[source.dev], estimated=True)).run()
    assert not any(isinstance(ev, Estimated) for ev in events)
    inv = next(ev for ev in events if isinstance(ev, Inventoried))
    assert inv.inventory is None and inv.sources == [source.dev]
    manifest = json.load(open(os.path.join(result.location, "manifest.json")))
    assert "estimate" not in manifest or manifest["estimate"] is None
