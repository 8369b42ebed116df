"""A warm capture is published as a TEST launch, never taken for the migration (issue 22), and
`coldclone-server status` and the wave page show each capture's phase. Driven by recorded
manifests (tests/fixtures/manifests/: the real receiver's document with a warm capture's three
syncs, and the same capture after its cutover); the real-Glance case is
tests/integration/test_publish.py::test_a_warm_capture_is_published_as_a_test_launch."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import records
from agent.choices import DiskFormat
from agent.manifest import ImageRole, Phase, PublishedImage, PublishRecord
from agent.server.admin import page
from agent.server.admin.status import State, scan, text_lines, totals
from agent.server.publish import images as I
from agent.server.publish.cli import render_plan
from agent.server.publish.plan import launch_plan
from agent.server.receive.manifest import CaptureDirectory
from agent.source.capture.session import CaptureResult
from tests import osc

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"
LAST_SYNC = 1796630403.0          # warm.json's last sync (epoch)


def _capture(root: Path, recorded: str | None, capture_id: str = "srv01", publish: PublishRecord | None = None,
             ) -> CaptureDirectory:
    """A capture directory holding a recorded manifest (recorded None: warm.json made a cold
    capture, its phase and syncs taken out) and a stand-in image."""
    doc = json.loads((RECORDED / (recorded or "warm.json")).read_text())
    if recorded is None:
        del doc["phase"], doc["syncs"]
    doc["capture_id"] = capture_id
    if publish is not None:
        doc["publish"] = records.encode(publish)
    cap = root / capture_id
    cap.mkdir(parents=True)
    (cap / "sda.qcow2").write_bytes(b"QFI\xfb")
    (cap / "manifest.json").write_text(json.dumps(doc))
    return CaptureDirectory.load(str(cap), purpose="published")


def _src(cap: CaptureDirectory) -> I.SourceImage:
    return I.SourceImage(cap.manifest.disks[0], ImageRole.BOOT, 0, cap.file("sda.qcow2"), "verified", "qcow2",
                         4 << 20, "0" * 32, False)


def _boot(name: str) -> PublishedImage:
    return PublishedImage("sda", "img-a", "qcow2", ImageRole.BOOT, 0, image_name=name, virtual_size=4 << 20)


def test_a_warm_capture_is_marked_a_test_of_its_last_sync(tmp_path):
    cap = _capture(tmp_path, "warm.json")
    launch = I.Launch.of(cap.manifest)
    assert (launch.phase, launch.sync, launch.test) == (Phase.WARM, 3, True)
    assert launch.suffix == "-test-sync3" and launch.tags == ["coldclone-test"]
    props = I.image_properties(cap, _src(cap), DiskFormat.QCOW2, None)
    assert (props["coldclone_phase"], props["coldclone_sync"]) == ("warm", "3")
    # the cutover of the same capture: the migration, marked so, no test tag or suffix
    cut = _capture(tmp_path / "c", "cutover.json")
    launch = I.Launch.of(cut.manifest)
    assert (launch.phase, launch.test, launch.suffix, launch.tags) == (Phase.CUTOVER, False, "", [])
    props = I.image_properties(cut, _src(cut), DiskFormat.QCOW2, None)
    assert props["coldclone_phase"] == "cutover" and "coldclone_sync" not in props
    assert cut.manifest.disks[0].cutover.segments_sent == 3
    # a cold capture: as before, no phase at all
    cold = _capture(tmp_path / "k", None)
    assert I.Launch.of(cold.manifest) == I.Launch(None)
    assert not {"coldclone_phase", "coldclone_sync"} & set(I.image_properties(cold, _src(cold), DiskFormat.QCOW2, None))


def test_the_launch_plan_of_a_warm_capture_says_test_and_names_everything_so(tmp_path):
    cap = _capture(tmp_path, "warm.json")
    images = [_boot("srv01-sda-test-sync3"),
              PublishedImage("sdb", "img-b", "qcow2", ImageRole.DATA, 1, virtual_size=2 << 30)]
    plan = launch_plan(cap, images)
    assert plan.test_sync == 3
    assert "TEST LAUNCH" in plan.test_notice and "crash-inconsistent" in plan.test_notice
    parsed = [osc.parse(s.argv) for s in plan.steps]
    assert parsed[1].name == "srv01-sdb-test-sync3"                  # the data volume
    assert parsed[-1].server_name == "srv01-test-sync3"              # the server
    script = plan.script()
    assert script.splitlines()[1] == f"# {plan.test_notice}"
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0, script
    rec = PublishRecord(cloud="c", disk_format="qcow2", images=images, plan=plan, phase=Phase.WARM, sync=3)
    shown = render_plan(rec)
    assert shown[0] == plan.test_notice
    # the record reads back with its phase, and the agent's summary says test
    back = PublishRecord.from_document(json.loads(json.dumps({"publish": records.encode(rec)})))
    assert back == rec and back.test
    res = CaptureResult("srv01", "ssh://rx@conv:22/srv", "/srv/srv01", cap.manifest, 30.0, 4 << 20, 4 << 20, 0,
                        4 << 20, publish=back)
    assert any("as a TEST launch of warm sync 3 (crash-inconsistent, not the migration)" in line
               for line in res.summary_lines())
    # the cutover's plan: no notice, the server named as the capture
    cut = _capture(tmp_path / "c", "cutover.json")
    plan = launch_plan(cut, [_boot("srv01-sda")])
    assert plan.test_sync is None and plan.test_notice == "" and "TEST" not in plan.script()
    assert osc.parse(plan.steps[-1].argv).server_name == "srv01"


def test_status_and_page_show_the_phase_and_a_warm_capture_is_not_done(tmp_path):
    root = tmp_path / "root"
    test_pub = PublishRecord(cloud="dc2", disk_format="qcow2", images=[_boot("warm2-sda-test-sync2")],
                             phase=Phase.WARM, sync=2)
    _capture(root, "warm.json", "warm1")
    _capture(root, "warm.json", "warm2", publish=test_pub)
    _capture(root, "cutover.json", "cut1")
    now = LAST_SYNC + 2 * 3600
    statuses = {s.capture_id: s for s in scan(str(root), name="ccw-a", now=now)}
    w1, w2, c1 = statuses["warm1"], statuses["warm2"], statuses["cut1"]
    assert (w1.state, w1.phase, w1.syncs, w1.last_sync) == (State.VERIFIED, "warm", 3, LAST_SYNC)
    assert w1.phase_text(now) == "warm: 3 syncs, the last 2.0 h ago"
    assert "cut over from the ISO" in w1.detail
    assert w2.state is State.PUBLISHED and "test image of sync 2" in w2.detail
    assert "3 syncs stored since: publish again for the newest" in w2.detail
    assert (c1.phase, c1.phase_text(now), c1.migrated) == ("cutover", "cutover", True)
    assert not w1.migrated and not w2.migrated
    [t] = totals(list(statuses.values()), now)
    assert (t.captures, t.done) == (3, 1) and t.finished is None     # two servers only warm: not done
    lines = text_lines(list(statuses.values()), now)
    assert any("warm1 [warm: 3 syncs, the last 2.0 h ago]" in line for line in lines), lines
    assert any("cut1 [cutover]" in line for line in lines), lines
    assert any(line.startswith("wave w1: servers done 1 of 3") for line in lines), lines
    html = page.fragment(list(statuses.values()), {}, now)
    assert 'data-capture-id="warm1" data-state="verified" data-phase="warm"' in html
    assert '<span class="phase">warm: 3 syncs, the last 2.0 h ago</span>' in html
    assert 'class="verified warm"' in html and 'class="verified done cutover"' in html
    assert "servers done 1 of 3" in html
