"""coldclone-publish against a real Glance API (glance-api from PyPI under uWSGI, noauth,
sqlite, file store; tests/testbed/glance.py), reached through openstacksdk and a
clouds.yaml, publishing a capture made by a real headless run: a Debian 12 UEFI disk
on a loop device, captured through the real sshd + coldclone-receive.

Asserted on what Glance holds: status, every property, checksum and os_hash_value
against the local file, and the bytes downloaded back.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess

import pytest
import requests

from agent.runcmd import run
from agent.choices import ConvertEngine
from agent.server.convert.model import Conversion, CopyMethod, ImageOut, Outcome
from agent.server.receive.manifest import CaptureDirectory
from tests.conftest import BIN, coldclone, sha256_of, ssh_args
from tests.integration.test_headless import headless, server_words
from tests.testbed import glance as tglance
from tests.testbed import sourceos
from tests.testbed.loop import attached

pytestmark = pytest.mark.root
GiB = 1 << 30


def publish(capture_dir, cloud, clouds_yaml, *args, timeout=300):
    return subprocess.run([os.path.join(BIN, "coldclone-publish"), capture_dir, "--cloud", cloud, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OS_CLIENT_CONFIG_FILE": clouds_yaml})


def image_id_of(out: str) -> str:
    line = next(l for l in out.splitlines() if l.startswith("COLDCLONE-PUBLISH-OK "))
    return dict(w.split("=", 1) for w in line.split()[1:])["image_id"]


def md5_sha512(path):
    a, b = hashlib.md5(), hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            a.update(chunk)
            b.update(chunk)
    return a.hexdigest(), b.hexdigest()


@pytest.fixture(scope="module")
def debian_img(tmp_path_factory):
    return sourceos.debian_uefi(str(tmp_path_factory.mktemp("deb") / "debian12-uefi.img"))


@pytest.fixture(scope="module")
def capture(sshd, tmp_path_factory, debian_img):
    """A real headless capture of the Debian UEFI disk: (capture dir, disk name, its stdout)."""
    img = debian_img
    rx = str(tmp_path_factory.mktemp("rx"))
    rx_dir = os.path.join(sshd.receiver_root, "publish-" + os.path.basename(os.path.dirname(rx)))
    shutil.rmtree(rx_dir, ignore_errors=True)
    os.makedirs(rx_dir)
    shutil.chown(rx_dir, sshd.user)
    before = sha256_of(img)
    with attached(img) as dev:
        name = os.path.basename(dev)
        r = headless(server_words(sshd, rx_dir, disks=name, capture_id="deb12-uefi"))
        assert r.returncode == 0, r.stdout + r.stderr
    assert sha256_of(img) == before
    yield os.path.join(rx_dir, "deb12-uefi"), name, r.stdout
    shutil.rmtree(rx_dir, ignore_errors=True)


def test_capture_manifest_carries_the_readiness_report(capture):
    cap, name, out = capture
    m = json.load(open(os.path.join(cap, "manifest.json")))
    ready = m["readiness"]
    assert ready["os_name"] == "Debian GNU/Linux 12 (bookworm)" and ready["disk"] == name
    assert (ready["os"]["id"], ready["os"]["version_id"]) == ("debian", "12")
    assert ready["firmware"] == "uefi"
    assert any("EFI system partition" in e for e in ready["firmware_evidence"])
    assert ready["boot_loader"] == "grub2"
    assert ready["root"] == {"mountpoint": "/", "spec": "/dev/sda2", "kind": "sd"}
    assert ready["swap"] == ["/dev/sda3"] and ready["resume"] == ["/dev/sda3"]
    assert sorted((b["what"], b["mac"]) for b in ready["mac_bindings"]) == [
        ("nm-mac-address", sourceos.MAC), ("udev-rule", sourceos.MAC)]
    assert ready["initramfs"]["path"] == f"/boot/initrd.img-{sourceos.KVER}"
    assert ready["initramfs"]["present"] == ["virtio_net"]
    assert ready["initramfs"]["missing"] == ["virtio_pci", "virtio_blk", "virtio_scsi"]
    assert ready["cloud_init"] is False and ready["qemu_guest_agent"] is True
    conv = {f["id"]: f["conversion"] for f in ready["findings"]}
    for fid in ("fstab-device-names", "bootloader-root-device", "resume-device",
                "initramfs-virtio", "persistent-net-rules", "nm-mac-address"):
        assert conv.get(fid), (fid, conv)
    assert conv["no-cloud-init"] is None   # a person decides
    # the headless console said it, before and after the capture
    assert out.count(f"coldclone: readiness: Debian GNU/Linux 12 (bookworm) on {name}; "
                     f"firmware uefi, boot loader grub2, cloud-init no") == 2
    assert "coldclone: readiness: [high] initramfs-virtio: conversion will rebuild" in out


def test_cli_capture_carries_the_readiness_report_too(sshd, rx_dir, debian_img):
    before = sha256_of(debian_img)
    with attached(debian_img) as dev:
        r = coldclone("capture", "--disk", dev, *ssh_args(sshd, rx_dir), "--capture-id", "cli-1",
                      "--calibrate", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sha256_of(debian_img) == before
    name = os.path.basename(dev)
    assert (f"readiness: Debian GNU/Linux 12 (bookworm) on {name}; firmware uefi, "
            f"boot loader grub2, cloud-init no") in r.stdout
    ready = json.load(open(os.path.join(rx_dir, "cli-1", "manifest.json")))["readiness"]
    assert (ready["disk"], ready["firmware"], ready["resume"]) == (name, "uefi", ["/dev/sda3"])


def test_publish_uploads_with_every_property_and_the_same_bytes(glance, capture):
    cap, name, _ = capture
    local = os.path.join(cap, f"{name}.qcow2")
    before = sha256_of(local)
    md5, sha512 = md5_sha512(local)
    r = publish(cap, "test", glance.clouds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the verified capture as captured" in r.stdout
    iid = image_id_of(r.stdout)
    img = requests.get(f"{glance.url}/v2/images/{iid}", timeout=10).json()
    m = json.load(open(os.path.join(cap, "manifest.json")))
    disk = m["disks"][0]
    vsize = json.loads(run(["qemu-img", "info", "--output=json", local]).stdout)["virtual-size"]
    assert img["status"] == "active"
    expected = {
        "disk_format": "qcow2", "container_format": "bare", "hw_disk_bus": "virtio",
        "hw_vif_model": "virtio", "hw_firmware_type": "uefi", "hw_machine_type": "q35",
        "os_type": "linux", "os_distro": "debian", "os_version": "12",
        "hw_qemu_guest_agent": "yes", "coldclone_capture_id": "deb12-uefi",
        "coldclone_digest": f"{disk['digest_algo']}:{disk['digest']}",
        "coldclone_image_file": f"{name}.qcow2",
    }
    assert {k: img.get(k) for k in expected} == expected
    assert img["min_disk"] == math.ceil(vsize / GiB) == 1
    assert img["checksum"] == md5
    assert (img["os_hash_algo"], img["os_hash_value"]) == ("sha512", sha512)
    # the bytes Glance serves are the bytes we verified
    got = hashlib.sha256()
    with requests.get(f"{glance.url}/v2/images/{iid}/file", stream=True, timeout=60) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == before == sha256_of(local)
    pub = m["publish"]
    assert (pub["cloud"], pub["disk_format"], pub["published"] != "") == ("test", "qcow2", True)
    [only] = pub["images"]
    assert (only["image_id"], only["checksum"], only["disk"], only["role"], only["position"]) == (
        iid, md5, name, "boot", 0)
    assert only["image_kind"] == "verified" and only["reused"] is False
    assert only["method"] == "glance-direct"      # the test Glance offers the interoperable import
    assert m["status"] == "complete" and m["readiness"]["firmware"] == "uefi"   # rest intact


def test_publishing_twice_finds_the_first_image(glance, capture):
    cap, _, _ = capture
    first = publish(cap, "test", glance.clouds)
    second = publish(cap, "test", glance.clouds)
    assert first.returncode == 0 and second.returncode == 0, second.stdout + second.stderr
    assert image_id_of(first.stdout) == image_id_of(second.stdout)
    assert "reused=yes" in second.stdout and "nothing uploaded" in second.stdout
    listed = requests.get(f"{glance.url}/v2/images",
                          params={"coldclone_capture_id": "deb12-uefi"}, timeout=10).json()
    verified = [i for i in listed["images"] if i["coldclone_image_file"].endswith(".qcow2")
                and not i["coldclone_image_file"].endswith(".kvm.qcow2")]
    assert len(verified) == 1
    assert json.load(open(os.path.join(cap, "manifest.json")))["publish"]["images"][0]["reused"] is True
    # coldclone-server status reads the manifest's publish section: the image id
    r = subprocess.run([os.path.join(BIN, "coldclone-server"), "status", "--root", os.path.dirname(cap), "--json"],
                       capture_output=True, text=True, timeout=60)
    [st] = [s for s in json.loads(r.stdout) if s["capture_id"] == "deb12-uefi"]
    assert st["state"] == "published" and st["image_ids"] == [image_id_of(first.stdout)], st


def test_converted_image_is_preferred(glance, capture, tmp_path):
    cap, name, _ = capture
    copy = str(tmp_path / "deb12-uefi")
    shutil.copytree(cap, copy)
    # stands in for coldclone-convert's output: other bytes, same guest
    run(["qemu-img", "convert", "-c", "-O", "qcow2", os.path.join(copy, f"{name}.qcow2"),
         os.path.join(copy, f"{name}.kvm.qcow2")])
    md5, _ = md5_sha512(os.path.join(copy, f"{name}.kvm.qcow2"))
    # A converted image the manifest does not record (a failed or interrupted conversion left
    # it, or anyone) is not taken: the verified image is published.
    r = publish(copy, "test", glance.clouds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the verified capture as captured" in r.stdout
    # recorded by the conversion, as coldclone-convert writes it: taken
    conv = Conversion(Outcome.CONVERTED, "converted", ConvertEngine.FIXUPS, {}, "tcg", "", "", "", 1.0,
                      images=[ImageOut(name, f"{name}.qcow2", f"{name}.kvm.qcow2", CopyMethod.COPY)])
    CaptureDirectory.load(copy, purpose="published").write_section("conversion", conv)
    r = publish(copy, "test", glance.clouds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(converted for KVM)" in r.stdout
    img = requests.get(f"{glance.url}/v2/images/{image_id_of(r.stdout)}", timeout=10).json()
    assert img["checksum"] == md5 and img["coldclone_image_file"] == f"{name}.kvm.qcow2"
    assert img["name"] == f"deb12-uefi-{name}-kvm"
    assert json.load(open(os.path.join(copy, "manifest.json")))["publish"]["images"][0]["image_kind"] == "converted"


def test_refused_upload_and_stopped_api_leave_the_capture_intact(capture, tmp_path):
    why = tglance.available()
    if why:
        pytest.skip(why)
    cap, name, _ = capture
    copy = str(tmp_path / "deb12-uefi")
    shutil.copytree(cap, copy)
    manifest = os.path.join(copy, "manifest.json")
    with open(manifest) as f:
        doc = json.load(f)
    doc.pop("publish", None)    # as the receiver wrote it
    with open(manifest, "w") as f:
        json.dump(doc, f)
    before = {p: sha256_of(os.path.join(copy, p)) for p in sorted(os.listdir(copy))}
    # a Glance whose quota is smaller than the image: it answers 413 mid-upload
    small = tglance.Glance(workdir=str(tmp_path / "glance-small"), image_size_cap=100_000).start()
    try:
        clouds = small.write_clouds_yaml(str(tmp_path / "clouds.yaml"), cloud="small")
        r = publish(copy, "small", clouds)
        assert r.returncode == 5, r.stdout + r.stderr
        assert "Glance refused the upload" in r.stderr and "413" in r.stderr, r.stderr
        assert "the local image is untouched" in r.stderr
        left = requests.get(f"{small.url}/v2/images", timeout=10).json()["images"]
        assert [i["status"] for i in left if i["status"] != "active"] == []
        assert {p: sha256_of(os.path.join(copy, p)) for p in sorted(os.listdir(copy))} == before
    finally:
        small.stop()
    r = publish(copy, "small", clouds, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "cannot talk to Glance (small)" in r.stderr and "clouds.yaml" in r.stderr
    assert {p: sha256_of(os.path.join(copy, p)) for p in sorted(os.listdir(copy))} == before
    small.cleanup()


def test_unknown_cloud_and_not_a_capture_are_usage_errors(glance, capture, tmp_path):
    cap, _, _ = capture
    r = publish(cap, "nosuchcloud", glance.clouds)
    assert r.returncode == 2 and "--cloud nosuchcloud" in r.stderr and "clouds.yaml" in r.stderr
    r = publish(str(tmp_path), "test", glance.clouds)
    assert r.returncode == 2 and "manifest.json does not exist" in r.stderr, r.stderr


RECORDED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "manifests")


def _phase_as_recorded(cap: str, recorded: str) -> None:
    """The receiver's manifest of `cap` given the phase, syncs (and cutover) of a recorded
    two-phase manifest (tests/fixtures/manifests/), as the receiver writes them after warm syncs
    or the cutover; the image and its digests stay the capture's own."""
    path = os.path.join(cap, "manifest.json")
    doc, rec = json.load(open(path)), json.load(open(os.path.join(RECORDED, recorded)))
    doc["phase"], doc["syncs"] = rec["phase"], rec["syncs"]
    if "cutover" in rec["disks"][0]:
        doc["disks"][0]["cutover"] = rec["disks"][0]["cutover"]
    doc.pop("publish", None)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_a_warm_capture_is_published_as_a_test_launch(glance, root, tmp_path):
    """A warm capture (3 syncs) goes to the real Glance as a TEST image: its name ends
    -test-sync3, it is tagged coldclone-test and says coldclone_phase=warm, coldclone_sync=3,
    and the plan says test launch. The cutover of the same capture (the same image file: nothing
    changed after the last sync) is a new image marked cutover, never the test image found again."""
    from tests.testbed import guestdisk
    with open(tmp_path / "sda.raw", "wb") as f:
        for i in range(24):
            f.write(os.urandom(1 << 20) if i % 4 else bytes(1 << 20))
    cap = guestdisk.make_capture(root, "warm01", {"sda": str(tmp_path / "sda.raw")}, {"hostname": "warm01"})
    _phase_as_recorded(cap, "warm.json")
    local = os.path.join(cap, "sda.qcow2")
    md5, _ = md5_sha512(local)
    r = publish(cap, "test", glance.clouds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "a WARM capture (3 syncs, the last stored 2026-12-07T08:00:03+0000): published as a TEST launch" in r.stdout
    assert "TEST LAUNCH of a warm capture (sync 3): a crash-inconsistent copy" in r.stdout
    assert "phase=warm sync=3" in r.stdout
    test_id = image_id_of(r.stdout)
    img = requests.get(f"{glance.url}/v2/images/{test_id}", timeout=10).json()
    assert (img["status"], img["name"], img["tags"]) == ("active", "warm01-sda-test-sync3", ["coldclone-test"])
    assert (img["coldclone_phase"], img["coldclone_sync"], img["checksum"]) == ("warm", "3", md5)
    tagged = requests.get(f"{glance.url}/v2/images", params={"tag": "coldclone-test"}, timeout=10).json()
    assert [i["id"] for i in tagged["images"] if i["coldclone_capture_id"] == "warm01"] == [test_id]
    pub = json.load(open(os.path.join(cap, "manifest.json")))["publish"]
    assert (pub["phase"], pub["sync"], pub["images"][0]["tags"]) == ("warm", 3, ["coldclone-test"])
    assert pub["plan"]["test_sync"] == 3 and pub["plan"]["steps"][-1]["argv"][-1] == "warm01-test-sync3"
    # the cutover: the same bytes, published as the migration
    _phase_as_recorded(cap, "cutover.json")
    r = publish(cap, "test", glance.clouds)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TEST" not in r.stdout and "reused=no phase=cutover" in r.stdout, r.stdout
    cut_id = image_id_of(r.stdout)
    assert cut_id != test_id
    img = requests.get(f"{glance.url}/v2/images/{cut_id}", timeout=10).json()
    assert (img["name"], img["tags"], img["coldclone_phase"], img["checksum"]) == ("warm01-sda", [], "cutover", md5)
    assert "coldclone_sync" not in img
    # the test image is still there, still a test
    img = requests.get(f"{glance.url}/v2/images/{test_id}", timeout=10).json()
    assert (img["status"], img["tags"]) == ("active", ["coldclone-test"])
