"""coldclone-convert's input checks and plumbing that need no appliance."""

import json
import os
import xml.etree.ElementTree as ET

import pytest

from agent.server.convert.cli import main
from agent.server.convert.convert import libvirt_xml, read_capture
from agent.server.convert.guestfs import Accel, appliance_slot, detect_accel
from agent.errors import UsageError


def capture(tmp_path, **over):
    d = tmp_path / "cap1"
    d.mkdir()
    (d / "sda.qcow2").write_bytes(b"x")
    disk = {"name": "sda", "image": "sda.qcow2", "format": "qcow2", "size": 1, "digest": "ab" * 32,
            "verified": {"record_digests": True, "disk_digest": True, "readback_digest": True}}
    disk.update(over.pop("disk", {}))
    m = {"status": "complete", "capture_id": "cap1", "disks": [disk]}
    m.update(over)
    (d / "manifest.json").write_text(json.dumps(m))
    return str(d)


def test_read_capture_accepts_a_verified_capture(tmp_path):
    disks = read_capture(capture(tmp_path)).manifest.disks
    assert [(d.name, d.image, d.format) for d in disks] == [("sda", "sda.qcow2", "qcow2")]


@pytest.mark.parametrize("over,msg", [
    ({"status": "failed"}, "not 'complete'"),
    ({"disk": {"verified": {"disk_digest": True}}}, "not marked verified"),
    ({"disk": {"image": "gone.qcow2"}}, "is missing"),
    ({"disk": {"format": "vmdk"}}, "unknown image format"),
    ({"disks": []}, "lists no disks"),
])
def test_read_capture_refusals(tmp_path, over, msg):
    with pytest.raises(UsageError, match=msg):
        read_capture(capture(tmp_path, **over))


def test_cli_refuses_without_touching_the_directory(tmp_path, capsys):
    cap = capture(tmp_path, status="failed")
    before = sorted(os.listdir(cap))
    assert main([cap]) == 2
    assert "only a verified capture can be converted" in capsys.readouterr().err
    assert sorted(os.listdir(cap)) == before
    assert main([cap, "--overlay"]) == 2     # --overlay needs --engine fixups


def test_libvirt_xml_lists_every_disk_in_order(tmp_path):
    xml = libvirt_xml("guest", ["/srv/a'b/sda.qcow2", "/srv/x/sdb.qcow2"])
    disks = ET.fromstring(xml).findall("./devices/disk")
    assert [d.find("source").get("file") for d in disks] == ["/srv/a'b/sda.qcow2", "/srv/x/sdb.qcow2"]
    assert [d.find("target").get("dev") for d in disks] == ["sda", "sdb"]


def test_appliance_slot():
    assert appliance_slot("/dev/sda") == (0, None)
    assert appliance_slot("/dev/sdb3") == (1, 3)
    assert appliance_slot("/dev/md127") is None
    assert appliance_slot("/dev/vg0/root") is None


def test_forced_tcg(monkeypatch):
    monkeypatch.setenv("COLDCLONE_FORCE_TCG", "1")
    acc = detect_accel()
    assert acc == Accel(False, "COLDCLONE_FORCE_TCG=1 in the environment")
    env = acc.env()
    assert env["LIBGUESTFS_BACKEND"] == "direct" and env["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in Accel(True, "ok").env() or \
        os.environ.get("LIBGUESTFS_BACKEND_SETTINGS")


def test_virt_v2v_engine_refuses_at_once_without_its_tools(tmp_path, monkeypatch):
    """virt-v2v 2.x needs nbdcopy/nbdinfo only at its very end: checked before anything runs."""
    import agent.server.convert.convert as conv_mod
    from agent.server.convert.model import Outcome
    from agent.choices import ConvertEngine

    cap = capture(tmp_path)
    real_which = conv_mod.shutil.which
    monkeypatch.setattr(conv_mod.shutil, "which", lambda t: None if t == "nbdcopy" else real_which(t))
    assert conv_mod.v2v_missing_tools() == ["nbdcopy (libnbd-bin)"]
    result = conv_mod.convert(cap, ConvertEngine.VIRT_V2V, accel=Accel(False, "test"))
    assert result.result is Outcome.FAILED and "missing nbdcopy (libnbd-bin)" in result.message
    m = json.load(open(os.path.join(cap, "manifest.json")))
    assert m["conversion"]["result"] == "failed" and m["status"] == "complete"
    assert sorted(os.listdir(cap)) == ["manifest.json", "sda.qcow2"]
