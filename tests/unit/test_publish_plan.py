"""Publishing's pure parts (issue 24): the disk format a cloud gets, the source machine
discovery records, and the launch plan, whose every command the real `openstack` client's
parser takes (python-openstackclient, tests/osc.py)."""

import json
import subprocess
from pathlib import Path

import pytest

from agent import records
from agent.errors import UsageError
from agent.guestos.report import from_source
from agent.guestos.tree import inspect_tree
from agent.manifest import AddressPolicy, ImageRole, PublishedImage, PublishRecord, SourceMachine
from agent.choices import ConvertEngine, ConvertNetwork
from agent.server.convert.model import Conversion, CopyMethod, Fix, FixKind, ImageOut, NetworkMapping, Outcome
from agent.server.publish.cli import render_plan
from agent.server.publish.cloud import CloudOffer, choose_format, default_store_type
from agent.choices import DiskFormat
from agent.server.publish.plan import launch_plan
from agent.server.receive.manifest import CaptureDirectory
from agent.source.discover import machine
from tests import osc
from tests.testbed.sourceos import TREE

MiB, GiB = 1 << 20, 1 << 30
TREES = Path(__file__).resolve().parents[1] / "fixtures" / "sourceos"

# GET /v2/info/stores/detail of a Glance whose default store is Ceph RBD (glance 2023.1+, as an
# admin sees it: the `default` flag is the string "true"); the file store beside it.
CEPH_STORES = {"stores": [
    {"id": "ceph", "type": "rbd", "default": "true", "weight": 0,
     "properties": {"chunk_size": 8, "pool": "images", "thin_provisioning": False}},
    {"id": "local", "type": "file", "weight": 0,
     "properties": {"data_dir": "/var/lib/glance/images/", "chunk_size": 65536, "thin_provisioning": False}}]}
ALL = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")


def test_the_disk_format_follows_the_cloud():
    assert default_store_type(CEPH_STORES) == "rbd"
    assert default_store_type({"stores": [{"id": "fs", "default": "true", "type": "file"}]}) == "file"
    assert default_store_type({"stores": []}) is None and default_store_type("x") is None
    ceph = CloudOffer(("glance-direct",), ALL, "rbd")
    assert choose_format(None, ceph)[0] is DiskFormat.RAW and "Ceph RBD" in choose_format(None, ceph)[1]
    assert choose_format(None, CloudOffer((), ALL, "file"))[0] is DiskFormat.QCOW2
    assert choose_format(None, CloudOffer((), None, None))[0] is DiskFormat.QCOW2
    assert choose_format(None, CloudOffer((), ("vmdk", "iso"), None))[0] is DiskFormat.VMDK
    assert choose_format(None, CloudOffer((), ("raw", "vmdk"), "rbd"))[0] is DiskFormat.RAW
    # asked for: taken when the cloud takes it, even on Ceph
    assert choose_format(DiskFormat.QCOW2, ceph) == (DiskFormat.QCOW2, "asked for (--disk-format)")
    with pytest.raises(UsageError, match=r"--disk-format qcow2: this cloud's Glance does not take it "
                                         r"\(it takes vmdk, iso\)"):
        choose_format(DiskFormat.QCOW2, CloudOffer((), ("vmdk", "iso"), None))
    with pytest.raises(UsageError, match="takes none of qcow2, raw, vmdk"):
        choose_format(None, CloudOffer((), ("iso", "ami"), None))


def test_discovery_records_the_machine(tmp_path):
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    (sys_root / "devices/system/cpu").mkdir(parents=True)
    (sys_root / "devices/system/cpu/online").write_text("0-3,8,10-11\n")
    mem = sys_root / "devices/system/memory"
    for i in range(6):
        (mem / f"memory{i}").mkdir(parents=True)
        (mem / f"memory{i}/online").write_text("0\n" if i == 5 else "1\n")
    (mem / "block_size_bytes").write_text("8000000\n")          # 128 MiB, hex as the kernel writes it
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:        3906252 kB\nMemFree:  1 kB\n")
    assert machine.read(str(sys_root), str(proc)) == {"cpus": 7, "memory_bytes": 5 * 128 * MiB}
    # no memory blocks in sysfs: the kernel's MemTotal
    (mem / "block_size_bytes").unlink()
    assert machine.read(str(sys_root), str(proc)) == {"cpus": 7, "memory_bytes": 3906252 * 1024}
    assert machine.from_snapshot({"cpus": 7, "memory_bytes": 4096}) == SourceMachine(7, 4096)
    assert machine.from_snapshot(None) is None and machine.from_snapshot({"cpus": "x"}) is None


def _capture(tmp_path, machine_facts, readiness, conversion=None):
    """A complete capture whose OS is on its second disk (readiness.disk sdb)."""
    cap = tmp_path / "srv01"
    cap.mkdir()
    disks = []
    for name in ("sda", "sdb"):
        (cap / f"{name}.qcow2").write_bytes(b"QFI\xfb")
        disks.append({"name": name, "image": f"{name}.qcow2", "format": "qcow2", "size": 3 * GiB,
                      "digest": "ab" * 32, "digest_algo": "sha256-blocks",
                      "verified": {"record_digests": True, "disk_digest": True, "readback_digest": True,
                                   "qemu_img_compare": True}})
    doc = {"capture_id": "srv01", "status": "complete", "disks": disks, "readiness": readiness,
           "source": {"hostname": "srv01", "inventory": {"disks": [], "machine": machine_facts}}}
    if conversion is not None:
        doc["conversion"] = records.encode(conversion)
    (cap / "manifest.json").write_text(json.dumps(doc))
    return CaptureDirectory.load(str(cap), purpose="published")


def _images():
    return [PublishedImage("sda", "img-a", "qcow2", ImageRole.DATA, 0, virtual_size=500 * GiB + 1),
            PublishedImage("sdb", "img-b", "qcow2", ImageRole.BOOT, 1, virtual_size=40 * GiB)]


def test_plan_of_a_converted_server_with_a_fixed_address(tmp_path):
    """rocky9-nm sets 10.4.0.21 on eno1 and binds it to the old MAC; the conversion removed the
    binding. The plan follows a 16-CPU, 64 GiB source, keeps its address on a port, roots the
    server on the boot disk (the second one) and attaches the first as a volume."""
    report = from_source(inspect_tree(str(TREES / "rocky9-nm")), "sdb")
    conv = Conversion(Outcome.CONVERTED, "converted", ConvertEngine.FIXUPS, {}, "tcg", "", "", "", 1.0,
                      images=[ImageOut(d, f"{d}.qcow2", f"{d}.kvm.qcow2", CopyMethod.COPY) for d in ("sda", "sdb")],
                      fixes=[Fix(FixKind.NM_MAC, "/etc/NetworkManager/system-connections/eno1.nmconnection", 8,
                                 "mac-address=B0:26:28:AA:BB:01", "# ...", "old MAC")])
    assert records.decode(json.loads(json.dumps(records.encode(conv))), Conversion, "conversion") == conv    # the section, typed
    cap = _capture(tmp_path, {"cpus": 16, "memory_bytes": 64 * GiB - 300 * MiB}, records.encode(report), conv)
    plan = launch_plan(cap, _images())
    assert (plan.flavor.vcpus, plan.flavor.ram_mib, plan.flavor.disk_gib) == (16, 65536, 40)   # whole GiB
    assert "16 CPUs" in plan.flavor.basis
    net = plan.network
    assert net.addresses is AddressPolicy.FIXED
    assert net.bindings_removed == ("/etc/NetworkManager/system-connections/eno1.nmconnection",)
    assert net.bindings_left == () and net.static_configs == (
        "/etc/NetworkManager/system-connections/eno1.nmconnection",)
    parsed = [(s, osc.parse(s.argv)) for s in plan.steps]
    names = [" ".join(s.argv[1:3]) for s, _ in parsed]
    assert names == ["flavor create", "volume create", "volume show", "port create", "server create"]
    (_, vol), (port_step, port) = parsed[1], parsed[3]
    assert (vol.image, vol.size, vol.name) == ("img-a", 501, "srv01-sda")
    assert port_step.sets == "PORT" and port.fixed_ip == [{"ip-address": "$FIXED_IP"}]
    srv = parsed[4][1]
    assert (srv.image, srv.server_name) == ("img-b", "srv01")
    assert srv.nics == [{"net-id": "", "port-id": "$PORT", "v4-fixed-ip": "", "v6-fixed-ip": ""}]
    assert [b["uuid"] for b in srv.block_devices] == ["$VOL_SDA"]
    assert set(plan.variables) == {"FLAVOR", "NETWORK", "FIXED_IP"}
    script = plan.script()
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0, script
    rec = PublishRecord(cloud="c", disk_format="qcow2", images=_images(), plan=plan)
    print("\n".join(render_plan(rec)))
    # the manifest's section reads back to the same record
    assert PublishRecord.from_document(json.loads(json.dumps({"publish": records.encode(rec)}))) == rec


@pytest.mark.parametrize("policy", ["dhcp", "keep"])
def test_plan_follows_the_conversions_network_policy(tmp_path, policy):
    """rocky9-nm's primary eno1 is static (10.4.0.21/24). Converted with --network dhcp it asks
    the cloud's DHCP: no port with a fixed IP. With keep it keeps the address: a port with it,
    and the plan names the address and the interface the conversion gave it."""
    report = from_source(inspect_tree(str(TREES / "rocky9-nm")), "sdb")
    assert any(f.id == "static-ip" for f in report.findings)
    mapping = NetworkMapping(ConvertNetwork(policy), primary="eno1", style="networkmanager", name="eth0",
                             method="dhcp" if policy == "dhcp" else "static",
                             addresses=[] if policy == "dhcp" else ["10.4.0.21/24"],
                             gateway=None if policy == "dhcp" else "10.4.0.1")
    conv = Conversion(Outcome.CONVERTED, "converted", ConvertEngine.FIXUPS, {}, "tcg", "", "", "", 1.0,
                      images=[ImageOut(d, f"{d}.qcow2", f"{d}.kvm.qcow2", CopyMethod.COPY) for d in ("sda", "sdb")],
                      network=mapping)
    cap = _capture(tmp_path, {"cpus": 2, "memory_bytes": 4 * GiB}, records.encode(report), conv)
    net = launch_plan(cap, _images()).network
    assert (net.conversion_policy, net.interface) == (policy, "eth0")
    steps = [" ".join(s.argv[1:3]) for s in launch_plan(cap, _images()).steps]
    if policy == "dhcp":
        assert net.addresses is AddressPolicy.DHCP and net.static_configs == () and net.fixed_addresses == ()
        assert "port create" not in steps and "--network dhcp" in net.summary
    else:
        assert net.addresses is AddressPolicy.FIXED and net.fixed_addresses == ("10.4.0.21/24",)
        assert net.static_configs == ("/etc/NetworkManager/system-connections/eno1.nmconnection",)
        assert "port create" in steps
        assert "10.4.0.21/24" in launch_plan(cap, _images()).variables["FIXED_IP"]


def test_plan_of_unconverted_servers_and_one_without_machine_facts(tmp_path):
    # Debian 7 with a static address in /etc/network/interfaces, bound to the old MAC, not converted
    report = from_source(inspect_tree(str(TREES / "debian7-lvm")), "sdb")
    cap = _capture(tmp_path, None, records.encode(report))
    plan = launch_plan(cap, _images())
    assert (plan.flavor.vcpus, plan.flavor.ram_mib) == (2, 4096) and "older agent" in plan.flavor.basis
    net = plan.network
    assert net.addresses is AddressPolicy.FIXED and net.bindings_removed == ()
    assert set(net.bindings_left) == {b.path for b in report.mac_bindings} and net.bindings_left
    assert "run coldclone-convert" in net.summary
    for step in plan.steps:
        osc.parse(step.argv)


def test_plan_of_a_dhcp_server(tmp_path):
    root = tmp_path / "root"
    for rel, text in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    report = from_source(inspect_tree(str(root)), "sdb")
    cap = _capture(tmp_path, {"cpus": 4, "memory_bytes": 8 * GiB}, records.encode(report))
    plan = launch_plan(cap, _images())
    assert (plan.flavor.vcpus, plan.flavor.ram_mib, plan.flavor.disk_gib) == (4, 8192, 40)
    assert plan.network.addresses is AddressPolicy.DHCP and "any port of the network" in plan.network.summary
    srv = osc.parse(plan.steps[-1].argv)
    assert srv.nics == [{"net-id": "$NETWORK", "port-id": "", "v4-fixed-ip": "", "v6-fixed-ip": ""}]
    assert "PORT" not in plan.script() and set(plan.variables) == {"FLAVOR", "NETWORK"}


FAKE_OPENSTACK = """#!/bin/sh
# records each call, one argument a line, and answers as the client would with -f value -c ...
{ for a in "$@"; do printf '%s\\n' "$a"; done; echo --; } >> "$CALLS"
case "$1 $2" in
  "volume show") echo available ;;
  *) echo "id-of-$(( $(grep -c -- '^--$' "$CALLS") ))" ;;
esac
"""


def test_the_script_runs_each_step_as_planned_and_nothing_the_guest_wrote(tmp_path):
    """The script, run with a stand-in `openstack` that records its arguments: every step arrives
    word for word, the variables filled in; a guest file name holding a newline and $(...) (the
    guest is untrusted) stays text in a comment."""
    report = from_source(inspect_tree(str(TREES / "rocky9-nm")), "sdb")
    for f in report.findings:
        if f.id == "static-ip":
            f.evidence = ["/etc/x\n$(touch pwned)`touch pwned`"]
    cap = _capture(tmp_path, {"cpus": 2, "memory_bytes": GiB}, records.encode(report))
    plan = launch_plan(cap, _images())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "openstack").write_text(FAKE_OPENSTACK)
    (bin_dir / "openstack").chmod(0o755)
    (tmp_path / "plan.sh").write_text(plan.script())
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "FLAVOR": "m1.big",
           "NETWORK": "net one", "FIXED_IP": "10.4.0.21"}
    r = subprocess.run(["sh", str(tmp_path / "plan.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "pwned").exists()
    calls = [c.strip("\n").split("\n") for c in (tmp_path / "calls").read_text().split("--\n") if c.strip()]
    values = {"$FLAVOR": "m1.big", "$NETWORK": "net one", "$FIXED_IP": "10.4.0.21", "$VOL_SDA": "id-of-1",
              "$PORT": "id-of-3"}

    def filled(w):
        for k, v in values.items():
            w = w.replace(k, v)
        return w

    expected = [[filled(w) for w in step.argv[1:]] for step in plan.steps if not step.optional]
    assert calls == expected
