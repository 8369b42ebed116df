"""The whole server into OpenStack (issue 24): every disk of a capture published to the tier's
real Glance (tests/testbed/glance.py, shared with test_publish.py), in the format the cloud
wants, each image downloaded back and proven equal to the capture with `qemu-img compare`.

- a 2-disk capture (a tiny bootable disk and a data disk, by the real receiver) as qcow2
  (through Glance's interoperable import), raw and vmdk; each VMDK's header says
  monolithicSparse and its adapter, and the downloaded boot VMDK boots in QEMU on the
  controller its adapter names (lsiLogic: an LSI 53C895A SCSI HBA; ide: IDE), its boot sector
  reading the disk's last sector through that controller (tests/testbed/bootdisk.py);
- a cloud without the import and without qcow2 gets raw, by plain upload;
- a 3-disk capture carrying this machine's real discovered inventory: its launch plan's
  commands are parsed by the real `openstack` client (python-openstackclient), and its flavor
  follows the inventory.

Budget: one extra glance-api start (~10 s); five publishes of 100-200 MiB; two ~1 s boots.
"""

import json
import math
import os
import re
import socket
import time

import pytest
import requests

from agent.runcmd import run
from agent.source.discover import populate
from agent.source.discover.model import to_dict
from tests import osc
from tests.conftest import sha256_of
from tests.integration.test_publish import md5_sha512, publish
from tests.testbed import bootdisk, guestdisk
from tests.testbed import glance as tglance

pytestmark = pytest.mark.root
MiB, GiB = 1 << 20, 1 << 30


def published(out: str) -> dict:
    line = next(l for l in out.splitlines() if l.startswith("COLDCLONE-PUBLISH-OK "))
    return dict(w.split("=", 1) for w in line.split()[1:])


def section(cap):
    return json.load(open(os.path.join(cap, "manifest.json")))["publish"]


def glance_image(g, iid):
    return requests.get(f"{g.url}/v2/images/{iid}", timeout=10).json()


def download(g, iid, path):
    with requests.get(f"{g.url}/v2/images/{iid}/file", stream=True, timeout=120) as resp:
        resp.raise_for_status()
        with open(path, "wb") as f:
            for chunk in resp.iter_content(1 << 20):
                f.write(chunk)
    return path


def assert_same_disk(downloaded, fmt, capture_image):
    """The image Glance serves holds the captured disk, byte for byte."""
    r = run(["qemu-img", "compare", "-q", "-f", fmt, "-F", "qcow2", downloaded, capture_image], check=False)
    assert r.returncode == 0, (downloaded, capture_image, r.stdout, r.stderr)


def assert_glance_holds(g, img, path):
    """What Glance says it holds is what we downloaded (checksum, size, os_hash_value)."""
    md5, sha512 = md5_sha512(path)
    got = glance_image(g, img["image_id"])
    assert got["status"] == "active"
    assert (got["checksum"], got["size"], got["os_hash_algo"], got["os_hash_value"]) == (
        md5, os.path.getsize(path), "sha512", sha512)
    assert (img["checksum"], img["size"]) == (md5, os.path.getsize(path))
    return got


@pytest.fixture(scope="module")
def two_disks(root, tmp_path_factory):
    """A tiny bootable disk (its boot prints a marker read from its last sector) and a data
    disk of random and zero blocks, captured by the real receiver: (capture dir, marker)."""
    d = tmp_path_factory.mktemp("two")
    marker = bootdisk.bootable_disk(str(d / "sda.raw"), 64 * MiB, "pub2disk-" + os.urandom(4).hex())
    with open(d / "sdb.raw", "wb") as f:
        for i in range(48):
            f.write(os.urandom(MiB) if i % 3 else bytes(MiB))
    cap = guestdisk.make_capture(root, "pub2disk", {"sda": str(d / "sda.raw"), "sdb": str(d / "sdb.raw")})
    return cap, marker


def test_two_disks_become_a_boot_and_a_data_image(glance, two_disks, tmp_path):
    cap, _ = two_disks
    evidence = {n: sha256_of(os.path.join(cap, n)) for n in ("sda.qcow2", "sdb.qcow2")}
    t = time.monotonic()
    r = publish(cap, "test", glance.clouds)
    print(f"published 2 disks as qcow2 in {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "disk format qcow2: the smallest upload, taken by this cloud" in r.stdout
    assert "(Glance's interoperable import, glance-direct)" in r.stdout
    assert published(r.stdout)["images"] == "2"
    pub = section(cap)
    assert (pub["cloud"], pub["disk_format"], pub["adapter"]) == ("test", "qcow2", None)
    assert [(i["disk"], i["role"], i["position"], i["disk_format"], i["method"], i["reused"])
            for i in pub["images"]] == [("sda", "boot", 0, "qcow2", "glance-direct", False),
                                        ("sdb", "data", 1, "qcow2", "glance-direct", False)]
    for img in pub["images"]:
        disk = img["disk"]
        local = download(glance, img["image_id"], str(tmp_path / f"{disk}.qcow2"))
        got = assert_glance_holds(glance, img, local)
        assert {k: got.get(k) for k in ("disk_format", "container_format", "coldclone_capture_id",
                                        "coldclone_disk", "coldclone_role", "coldclone_position",
                                        "coldclone_image_file", "hw_disk_bus", "hw_vif_model")} == {
            "disk_format": "qcow2", "container_format": "bare", "coldclone_capture_id": "pub2disk",
            "coldclone_disk": disk, "coldclone_role": img["role"], "coldclone_position": str(img["position"]),
            "coldclone_image_file": f"{disk}.qcow2", "hw_disk_bus": "virtio", "hw_vif_model": "virtio"}
        assert got["name"] == f"pub2disk-{disk}"
        assert_same_disk(local, "qcow2", os.path.join(cap, f"{disk}.qcow2"))
    assert pub["plan"]["steps"] and "launch plan (sh; set $FLAVOR, $NETWORK first):" in r.stdout
    assert {n: sha256_of(os.path.join(cap, n)) for n in evidence} == evidence
    assert not [n for n in os.listdir(cap) if n.startswith("publish-")]      # the run's dir is gone


def test_raw_variant_and_republishing_finds_every_disk(glance, two_disks, tmp_path):
    cap, _ = two_disks
    t = time.monotonic()
    first = publish(cap, "test", glance.clouds, "--disk-format", "raw")
    print(f"published 2 disks as raw in {time.monotonic() - t:.1f} s")
    assert first.returncode == 0, first.stdout + first.stderr
    images = section(cap)["images"]
    assert [(i["disk"], i["disk_format"]) for i in images] == [("sda", "raw"), ("sdb", "raw")]
    for img in images:
        local = download(glance, img["image_id"], str(tmp_path / f"{img['disk']}.raw"))
        got = assert_glance_holds(glance, img, local)
        assert got["disk_format"] == "raw" and got["hw_disk_bus"] == "virtio"
        assert os.path.getsize(local) == img["virtual_size"]
        assert_same_disk(local, "raw", os.path.join(cap, f"{img['disk']}.qcow2"))
    again = publish(cap, "test", glance.clouds, "--disk-format", "raw")
    assert again.returncode == 0, again.stdout + again.stderr
    assert published(again.stdout)["reused"] == "yes" and again.stdout.count("nothing uploaded") == 2
    assert [i["image_id"] for i in section(cap)["images"]] == [i["image_id"] for i in images]
    listed = requests.get(f"{glance.url}/v2/images", params={"coldclone_capture_id": "pub2disk",
                                                             "disk_format": "raw"}, timeout=10).json()["images"]
    assert sorted(i["id"] for i in listed) == sorted(i["image_id"] for i in images)


def vmdk_descriptor(path) -> str:
    """The text descriptor a monolithicSparse VMDK embeds after its binary header."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    assert head[:4] == b"KDMV", head[:4]          # VMDK4 sparse extent magic
    start = head.index(b"# Disk DescriptorFile")
    return head[start:head.index(b"\0", start)].decode()


@pytest.mark.parametrize("adapter, controller, header, bus", [
    (None, "lsi53c895a", "lsilogic", {"hw_disk_bus": "scsi", "hw_scsi_model": "lsilogic"}),
    ("ide", "ide", "ide", {"hw_disk_bus": "ide", "hw_scsi_model": None}),
], ids=["lsiLogic", "ide"])
def test_vmdk_for_vmware_boots_on_its_controller(glance, two_disks, tmp_path, adapter, controller, header, bus):
    cap, marker = two_disks
    args = ["--disk-format", "vmdk"] + (["--adapter", adapter] if adapter else [])
    t = time.monotonic()
    r = publish(cap, "test", glance.clouds, *args)
    print(f"published 2 disks as vmdk ({adapter or 'default'}) in {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    pub = section(cap)
    want = adapter or "lsiLogic"
    assert (pub["disk_format"], pub["adapter"]) == ("vmdk", want)
    for img in pub["images"]:
        local = download(glance, img["image_id"], str(tmp_path / f"{img['disk']}.vmdk"))
        got = assert_glance_holds(glance, img, local)
        assert {k: got.get(k) for k in ("disk_format", "vmware_disktype", "vmware_adaptertype", "hw_vif_model",
                                        *bus)} == {"disk_format": "vmdk", "vmware_disktype": "sparse",
                                                   "vmware_adaptertype": want, "hw_vif_model": "e1000", **bus}
        desc = vmdk_descriptor(local)
        assert 'createType="monolithicSparse"' in desc and f'ddb.adapterType = "{header}"' in desc, desc
        assert_same_disk(local, "vmdk", os.path.join(cap, f"{img['disk']}.qcow2"))
    boot = next(i for i in pub["images"] if i["role"] == "boot")
    t = time.monotonic()
    out = bootdisk.boot_output(str(tmp_path / f"{boot['disk']}.vmdk"), "vmdk", controller, marker)
    print(f"boot of the downloaded VMDK on {controller}: {time.monotonic() - t:.1f} s")
    assert "COLDCLONE-BOOTSECTOR" in out and marker in out and "READ-FAILED" not in out, out


def test_a_cloud_without_import_or_qcow2_gets_raw_by_plain_upload(two_disks, tmp_path):
    why = tglance.available()
    if why:
        pytest.skip(why)
    cap, _ = two_disks
    g = tglance.Glance(workdir=str(tmp_path / "glance-raw"), import_methods=[],
                       disk_formats=["raw", "vmdk", "iso"]).start()
    try:
        clouds = g.write_clouds_yaml(str(tmp_path / "clouds.yaml"), cloud="rawonly")
        r = publish(cap, "rawonly", clouds, "--disk-format", "qcow2")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "--disk-format qcow2: this cloud's Glance does not take it (it takes raw, vmdk, iso)" in r.stderr
        r = publish(cap, "rawonly", clouds, "--disk-format", "raw", "--adapter", "ide")
        assert r.returncode == 2 and "--adapter ide is for --disk-format vmdk" in r.stderr, r.stderr
        assert requests.get(f"{g.url}/v2/images", timeout=10).json()["images"] == []
        r = publish(cap, "rawonly", clouds)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "disk format raw: this cloud's Glance takes raw, vmdk, iso: not qcow2" in r.stdout
        assert "(plain upload)" in r.stdout and "glance-direct" not in r.stdout
        pub = section(cap)
        assert [(i["disk_format"], i["method"]) for i in pub["images"]] == [("raw", "upload")] * 2
        for img in pub["images"]:
            local = download(g, img["image_id"], str(tmp_path / f"{img['disk']}.raw"))
            assert_glance_holds(g, img, local)
            assert_same_disk(local, "raw", os.path.join(cap, f"{img['disk']}.qcow2"))
    finally:
        g.cleanup()


@pytest.fixture(scope="module")
def three_disks(root, tmp_path_factory):
    """Three disks (boot, a small data disk, a sparse one just over 1 GiB) with the source
    facts the agent sends: this machine's hostname and its inventory, discovered for real."""
    d = tmp_path_factory.mktemp("three")
    bootdisk.bootable_disk(str(d / "sda.raw"), 32 * MiB, "plan3")
    with open(d / "sdb.raw", "wb") as f:
        f.write(os.urandom(8 * MiB))
    with open(d / "sdc.raw", "wb") as f:
        f.truncate(GiB + 64 * MiB)
        f.seek(GiB)
        f.write(os.urandom(MiB))
    inventory = to_dict(populate.discover())
    cap = guestdisk.make_capture(root, "plan3", {n: str(d / f"{n}.raw") for n in ("sda", "sdb", "sdc")},
                                 source={"hostname": socket.gethostname(), "inventory": inventory})
    return cap, inventory


def test_launch_plan_parses_with_the_openstack_client(glance, three_disks, tmp_path):
    cap, inventory = three_disks
    t = time.monotonic()
    r = publish(cap, "test", glance.clouds)
    print(f"published 3 disks in {time.monotonic() - t:.1f} s")
    assert r.returncode == 0, r.stdout + r.stderr
    pub = section(cap)
    boot, sdb, sdc = pub["images"]
    assert [(i["disk"], i["role"], i["position"]) for i in (boot, sdb, sdc)] == [
        ("sda", "boot", 0), ("sdb", "data", 1), ("sdc", "data", 2)]
    plan = pub["plan"]
    parsed = {}
    for step in plan["steps"]:
        ns = osc.parse(step["argv"])          # the client's own parser takes every command
        parsed.setdefault(" ".join(step["argv"][1:3]), []).append((step, ns))
    # the flavor follows the source's inventory: its CPUs, its memory, its boot disk
    machine = inventory["machine"]
    assert machine["cpus"] == os.cpu_count()
    meminfo = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal:"))) * 1024
    assert meminfo <= machine["memory_bytes"] <= meminfo * 1.1
    flavor = plan["flavor"]
    assert (flavor["vcpus"], flavor["ram_mib"], flavor["disk_gib"]) == (
        machine["cpus"], math.ceil(machine["memory_bytes"] / GiB) * 1024, 1)
    [(_, fl)] = parsed["flavor create"]
    assert (fl.vcpus, fl.ram, fl.disk) == (flavor["vcpus"], flavor["ram_mib"], flavor["disk_gib"])
    # each data image a volume of its size, in the capture's order, each waited for
    vols = [(s["sets"], ns.image, ns.size, ns.name) for s, ns in parsed["volume create"]]
    assert vols == [("VOL_SDB", sdb["image_id"], 1, "plan3-sdb"), ("VOL_SDC", sdc["image_id"], 2, "plan3-sdc")]
    assert [(s["until"], s["argv"][-1]) for s, _ in parsed["volume show"]] == [
        ("available", "$VOL_SDB"), ("available", "$VOL_SDC")]
    # the server: root from the boot image, the volumes attached in order
    [(_, srv)] = parsed["server create"]
    assert (srv.image, srv.flavor, srv.server_name) == (boot["image_id"], "$FLAVOR", "plan3")
    assert [(b["uuid"], b["source_type"], b["destination_type"], b["boot_index"]) for b in srv.block_devices] == [
        ("$VOL_SDB", "volume", "volume", "-1"), ("$VOL_SDC", "volume", "volume", "-1")]
    # no OS inspected on these disks: the network policy says so, and the server takes $NETWORK
    assert plan["network"]["addresses"] == "unknown" and "no source OS was inspected" in plan["network"]["summary"]
    # the script is valid sh, and what the operator must set is asked for first
    script = tmp_path / "plan.sh"
    script.write_text("\n".join(l[len("coldclone-publish:   "):] for l in r.stdout.splitlines()
                                if l.startswith("coldclone-publish:   ")) + "\n")
    assert run(["sh", "-n", str(script)], check=False).returncode == 0, script.read_text()
    text = script.read_text()
    assert ': "${FLAVOR:?set FLAVOR first (see above)}"' in text and ': "${NETWORK:?set NETWORK' in text
    assert re.search(r"^VOL_SDB=\$\(openstack volume create --image \S+ --size 1 ", text, re.M), text
    assert "# openstack flavor create" in text          # an admin's step: a suggestion
