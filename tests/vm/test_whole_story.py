"""The whole story, as a user lives it, on real parts only: physical servers captured by the
live ISO, converted, and reachable as fresh cloud instances.

The sources are real bootable Debian 12 server disks (tests/testbed/debian_disk.sh) on a SATA
(AHCI) controller, in a server whose NIC is an Intel e1000 (MAC 52:54:00:12:34:99, PCI slot 3):
  (a) "story": BIOS/MBR, fstab and GRUB root= by /dev/sda names, a 70-persistent-net.rules line
      naming that MAC `eth0`, ifupdown DHCP on eth0, no net.ifnames=0;
  (b)/(c) "host-only": UEFI (GPT, GRUB only in \\EFI\\debian\\, no removable-media loader), the
      hardware-derived name `ens3` with the static 10.0.2.77/24 (ifupdown, as the installer
      writes it), an initramfs with only the SATA server's drivers (MODULES=list).
Before that (issue 22, two-phase migration) the story server runs on its own disk, on its own
hardware: it fetches `coldclone sync` from the conversion server (curl over its DHCP network),
and while a writer appends to a log and rewrites pages of a database file it syncs its disk
warm twice into the capture id the ISO continues; then it powers off. The ISO's headless capture
of it is the cutover: only the segments that changed since the second sync cross the link
(asserted on the receiver's counters), verified as a cold capture is (the image equals the disk).
ONE headless BIOS boot of the live ISO captures both (the post hook runs the ISO's own
`coldclone capture` for the second disk, to a second conversion server), each to the host's
sshd whose forced command is the real receiver with `--convert --convert-engine fixups`
(`--network keep` for the second). Then:
  (a) publish to a real Glance, download with openstacksdk, boot on virtio-blk + virtio-net
      with another MAC in another PCI slot (SeaBIOS): the guest fetches /ping/TOKEN/DEV/ADDR
      from a server this test runs: eth0 with its DHCP address;
  (b) the `keep` conversion booted under a fresh OVMF (new NVRAM vars file, q35) on virtio with
      another MAC and slot: the rebuilt initramfs finds the disk, the firmware finds the loader
      at \\EFI\\BOOT\\BOOTX64.EFI, and eth0 answers from 10.0.2.77/24 (valid on QEMU's 10.0.2.0/24);
  (c) the same capture converted again with `coldclone-convert --network dhcp`, booted the same
      way: eth0 answers from its DHCP address (10.0.2.15/24).
Each time, the readiness report the agent wrote before the capture predicted exactly the fixes
applied (prediction_gaps with the run's --network policy).

The engine is `fixups`, not virt-v2v: virt-v2v spends ~17 min under TCG on one such disk
(tests/integration/test_convert_v2v.py, slow); our fix-ups, with the guest's own
update-initramfs for the host-only one, take 1.5-3.5 min.

Measured here (2 cores shared with other jobs' QEMUs, TCG), the module (-m "vm and not slow")
in 534 s after the merge with main (816 s before it, on a busier host): the ISO boot 92 s, both
captures 166 s; (a) 365 s of which conversion 69 s, publish + download 25 s, boot to the host's
ping 58 s; (b) 37 s (its conversion, 114 s with the initramfs rebuild 64 s, ran meanwhile), boot
to ping 37 s under a fresh OVMF; (c) 115 s: conversion 79 s (initramfs 40 s), boot to ping 36 s.
Under heavy load (another 2-core test run beside it) the same module took 1247 s.
With the warm phase (issue 22, load 4-5): module 864 s with both disks rebuilt (155 s); the warm
phase 208 s (boot 29 s, sync 1 103 s sending 207 MB, sync 2 46 s sending 4.0 MB / 100 segments);
the cutover 29.9 s reading 2 GiB and sending 2.4 MB (76 segments of 64 KiB).

The same story for a UEFI server booted by the ISO under OVMF (q35), -m slow only.

Run: .venv/bin/pytest -q -s -m "vm and not slow" tests/vm/test_whole_story.py (-m vm adds the
UEFI story, its own OVMF boot of the ISO: 806 s more); figures are printed and written to
<vm-logs>/whole-story-*.json
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from agent import records
from agent.choices import ConvertEngine, ConvertNetwork
from agent.server.convert.model import Fix, prediction_gaps
from tests.conftest import BIN
from tests.testbed import glance as tglance
from tests.testbed import guestdisk

from . import guest, vmboot
from .conftest import KEEP, LOG_DIR, TIMEOUT, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

BASE = os.path.join(vmboot.BUILD, "cache", "base-bookworm-amd64.tar.zst")
CACHE = os.environ.get("COLDCLONE_CONVERT_CACHE", "/var/tmp/coldclone-convert")
CAPTURE_ID = "vm-story"
HOST_ONLY_ID = "vm-host-only"
# two 2 GiB disks under TCG: ~2.5 min boot, then the captures, on a loaded 2-core host
CAPTURE_TIMEOUT = 1500
CONVERT_TIMEOUT = 1200        # the fixups engine took 173-206 s under TCG; the appliance is built once per user
BOOT_TIMEOUT = 600
GUEST_UP, GUEST_PING = "COLDCLONE-GUEST-UP", "COLDCLONE-GUEST-PING"
STORY_SERIAL, HOST_ONLY_SERIAL = "cc-debian", "cc-host-only"
# the source server's NIC: the MAC the story disk's udev rule names, in PCI slot 3 (ens3)
SOURCE_MAC = "52:54:00:12:34:99"
SOURCE_NIC = ["-netdev", "user,id=n0", "-device", f"e1000,netdev=n0,mac={SOURCE_MAC},addr=0x3"]
# the cloud's NIC: virtio, another MAC, another slot (its slot name would be ens7)
CLOUD_MAC = "52:54:00:c0:1d:07"
CLOUD_NIC = ["-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={CLOUD_MAC},addr=0x7"]


class _Pings(BaseHTTPRequestHandler):
    """GET /ping/TOKEN/DEV/ADDRESS: remembered (the host-side proof) and answered `pong TOKEN`."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        token = self.path.split("/")[2] if self.path.count("/") >= 2 else ""
        type(self).seen.append(self.path)
        _answer(self, f"pong {token}\n".encode())

    def log_message(self, *a):
        pass


def _answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _wait_for_conversion(cap_dir: str, timeout: float) -> dict:
    """The manifest once the queued conversion wrote its `conversion` section."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(os.path.join(cap_dir, "manifest.json")) as f:
            m = json.load(f)
        if "conversion" in m:
            return m
        time.sleep(3)
    out = os.path.join(cap_dir, "conversion.out")
    tail = open(out, errors="replace").read()[-3000:] if os.path.exists(out) else "(no conversion.out)"
    raise AssertionError(f"no conversion section in the manifest within {timeout:.0f} s:\n{tail}")


def _download(clouds_yaml: str, cloud: str, image_id: str, dest: str) -> None:
    """The image's bytes as a cloud user gets them: openstacksdk with the same clouds.yaml."""
    import openstack.config.loader
    import openstack.connection

    region = openstack.config.loader.OpenStackConfig(config_files=[clouds_yaml]).get_one(cloud=cloud)
    conn = openstack.connection.Connection(config=region)
    try:
        with open(dest, "wb") as f:
            conn.image.download_image(image_id, output=f)
    finally:
        conn.close()


def _story_prereqs(firmware: str) -> None:
    _skip_unless_ready(firmware)
    if not os.path.isfile(BASE):
        pytest.skip(f"{BASE} missing: build the live ISO (make iso) for its debootstrap cache")
    why = tglance.available()
    if why:
        pytest.skip(why)
    if not shutil.which("guestfish"):
        pytest.skip("guestfish not installed (libguestfs-tools): coldclone-convert needs it")
    if vmboot.missing_prerequisites("uefi-disk"):
        pytest.skip(vmboot.missing_prerequisites("uefi-disk"))


def _write_figures(name: str, figures: dict) -> None:
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, f"whole-story-{name}.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(f"\nwhole story figures ({name}): " + json.dumps(figures, indent=2))


# ---------------------------------------------------------------------------- the captures
@dataclass
class Captured:
    """One source disk captured by the ISO into a receiver root that converts it."""

    source: guest.SourceDisk
    server: guest.HostServer
    rx: str
    capture_id: str
    policy: ConvertNetwork

    @property
    def cap_dir(self) -> str:
        return os.path.join(self.rx, self.capture_id)


@dataclass
class StoryBoot:
    run: guest.Run
    story: Captured
    host_only: Captured | None = None
    figures: dict = field(default_factory=dict)


def _host_only_hook(cap: Captured, identity: str) -> str:
    """The post hook: the ISO's own `coldclone capture` sends the second disk to the second
    conversion server (its own capture id, manifest and conversion), mode=used."""
    return (f"#!/bin/sh\nset -eu\n"
            f"exec /opt/coldclone/bin/coldclone capture --disk /dev/disk/by-id/ata-QEMU_HARDDISK_{cap.source.serial} "
            f"--to {cap.server.url(cap.rx)} --identity {identity} --hostkey {cap.server.fingerprint} "
            f"--capture-id {cap.capture_id} --mode used --progress-interval 60\n")


def _warm_phase(story: Captured, workdir: str, figures: dict) -> None:
    """Issue 22's warm phase: the story server boots its own Debian from its disk (SATA, its
    e1000), fetches `coldclone sync` from the conversion server over its network, and while a
    writer appends to a log and rewrites pages of a small database file, syncs its disk twice
    into the capture id the ISO's headless capture later continues (its cutover); then it powers
    off. The disk is the server's own: it changes (a copy of the cached disk, sealed after)."""
    sync_file = os.path.join(workdir, "coldclone-sync")
    r = subprocess.run([os.path.join(BIN, "coldclone-server"), "sync-file", "--output", sync_file],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    digest = guest.sha256_of(sync_file)
    files = ThreadingHTTPServer(("127.0.0.1", 0), type("Files", (_Files,), {"file": sync_file}))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    script = os.path.join(workdir, "warm-run.sh")
    sync = (f"python3 /root/coldclone sync --disk /dev/sda --to {story.server.url(story.rx)} "
            f"--identity /root/agent_key --hostkey {story.server.fingerprint} --capture-id {story.capture_id} "
            f"--bwlimit 400mbit")
    with open(script, "w") as f:
        f.write(f"""set -euo pipefail
cfg={guest.FWCFG_DIR}
# the server's network, as its own ifupdown brings it up (DHCP on eth0: it may still be settling)
for i in $(seq 1 90); do
    ip route | grep -q '^default' && break
    [ $((i % 20)) = 0 ] && ifup --force eth0 || true
    sleep 1
done
ip route | grep -q '^default' || {{ ip addr; journalctl -b -u networking --no-pager | tail -20; exit 9; }}
install -m 600 $cfg/identity/raw /root/agent_key
curl -fsS -o /root/coldclone http://{guest.HOST_FROM_GUEST}:{files.server_address[1]}/coldclone
echo "{digest}  /root/coldclone" | sha256sum -c -
mkdir -p /var/lib/ccdb
head -c 4194304 /dev/urandom > /var/lib/ccdb/db.bin
sync
writer() {{
    i=0
    while :; do
        echo "$(date +%s.%N) entry $i" >> /var/log/cc-writer.log
        dd if=/dev/urandom of=/var/lib/ccdb/db.bin bs=4096 count=1 seek=$((RANDOM % 1024)) conv=notrunc,fsync status=none
        i=$((i + 1))
        sleep 0.5
    done
}}
writer &
w=$!
echo COLDCLONE-SYNC-1-START
{sync} | sed 's/^/COLDCLONE-SYNC-1 /'
sleep 2
echo COLDCLONE-SYNC-2-START
{sync} | sed 's/^/COLDCLONE-SYNC-2 /'
sleep 2
kill $w
wait $w || true
echo "$(date +%s.%N) the last entry" >> /var/log/cc-writer.log
sync
""")
    fw_run, _ = guest.fwcfg_file("run", script)
    fw_key, _ = guest.fwcfg_file("identity", story.server.identity)
    marks = ("COLDCLONE-SYNC-1-START", "COLDCLONE-SYNC-2-START", "COLDCLONE-SYNC-2 capture_id=")
    try:
        boot = vmboot.boot_any_accel(
            "disk", expect="COLDCLONE-GUEST-RUN exit=", nic=SOURCE_NIC, until_exit=True, timeout=CAPTURE_TIMEOUT,
            log_dir=LOG_DIR, name="vm-story-warm", memory_mib=1024, marks=marks,
            extra_args=guest.disk_args([story.source]) + fw_run + fw_key)
    finally:
        files.shutdown()
        files.server_close()
    tail = "\n".join(boot.console.splitlines()[-60:])
    assert boot.found_line.endswith("exit=0") and boot.exited, f"the warm phase failed:\n{tail}"
    for n in (1, 2):
        assert f"COLDCLONE-SYNC-{n} capture_id={story.capture_id}" in boot.console, tail
    figures["warm_boot_seconds"] = round(boot.mark_seconds[marks[0]], 1)
    figures["warm_syncs_seconds"] = round(boot.mark_seconds[marks[2]] - boot.mark_seconds[marks[0]], 1)
    figures["warm_phase_seconds"] = round(boot.exit_seconds or -1, 1)


class _Files(BaseHTTPRequestHandler):
    """The conversion server's web server, as far as the warm phase needs one: GET /coldclone."""

    file = ""

    def do_GET(self):  # noqa: N802
        with open(type(self).file, "rb") as f:
            _answer(self, f.read())

    def log_message(self, *a):
        pass


def _boot_and_capture(firmware: str, story_disk: str, host_only_disk: "str | Future[str] | None", workdir: str,
                      warm: bool = False) -> StoryBoot:
    """host_only_disk: its path, or the build of it, which goes on meanwhile (during the warm phase)."""
    figures: dict = {"firmware": firmware}
    servers = []
    try:
        story = Captured(guest.SourceDisk(story_disk, serial=STORY_SERIAL, bus="ahci"),
                         guest.HostServer(workdir=os.path.join(workdir, f"story-server-{firmware}"),
                                          receiver_args="--convert --convert-engine fixups").start(),
                         "", f"{CAPTURE_ID}-{firmware}", ConvertNetwork.DHCP)
        servers.append(story.server)
        story.rx = story.server.new_dir("story")
        if warm:
            _warm_phase(story, workdir, figures)
        story.source.seal()     # the disk as the cutover finds it: the ISO must leave it so
        if isinstance(host_only_disk, Future):
            host_only_disk = host_only_disk.result()
        fw, identity = guest.fwcfg_file("identity", story.server.identity)
        disks, extra = [story.source], f"coldclone.disks=/dev/disk/by-id/ata-QEMU_HARDDISK_{STORY_SERIAL}"
        host_only = None
        if host_only_disk:
            host_only = Captured(guest.SourceDisk(host_only_disk, serial=HOST_ONLY_SERIAL, bus="ahci").seal(),
                                 guest.HostServer(workdir=os.path.join(workdir, "host-only-server"),
                                                  receiver_args="--convert --convert-engine fixups --network keep").start(),
                                 "", HOST_ONLY_ID, ConvertNetwork.KEEP)
            servers.append(host_only.server)
            host_only.rx = host_only.server.new_dir("host-only")
            fw2, identity2 = guest.fwcfg_file("identity2", host_only.server.identity)
            hook = os.path.join(workdir, "host-only-post.sh")
            with open(hook, "w") as f:
                f.write(_host_only_hook(host_only, identity2))
            fw3, post = guest.fwcfg_file("post", hook)
            fw += fw2 + fw3
            # On the first SATA port: the ISO's kernel then mostly names the story disk sdb, which
            # the server's own OS called sda at the warm syncs (as a second disk or the ISO's USB
            # stick makes it on real hardware; the order is the kernel's, not guaranteed).
            disks.insert(0, host_only.source)
            extra += f" coldclone.post={post}"
        cmdline = guest.headless_cmdline(story.server, story.rx, story.capture_id, identity, extra)
        # the ISO boots as the server does: SeaBIOS/isolinux or OVMF/GRUB EFI (q35), its e1000 NIC
        run = guest.boot_headless(firmware, cmdline, extra_args=fw + guest.disk_args(disks), nic=SOURCE_NIC,
                                  timeout=max(TIMEOUT, CAPTURE_TIMEOUT), name=story.capture_id, log_dir=LOG_DIR)
    except BaseException:
        for s in servers:
            s.stop()
        raise
    print(f"\n{run.times()}")
    figures["iso_boot_seconds"] = round(run.boot_seconds or -1, 1)
    figures["captures_seconds"] = round(run.capture_seconds or -1, 1)
    return StoryBoot(run, story, host_only, figures)


@pytest.fixture(scope="module")
def bios_story(vm_workdir):
    """One BIOS boot of the ISO on the e1000 server capturing both Debian disks."""
    _story_prereqs("bios")
    t = time.monotonic()
    cached = guestdisk.debian_disk(BASE, CACHE, "bios")
    # the server's own disk: it runs, syncs warm and changes (the cached one stays as built)
    story_disk = os.path.join(vm_workdir, "story-server.raw")
    subprocess.run(["cp", "--sparse=always", cached, story_disk], check=True)
    source_seconds = round(time.monotonic() - t, 1)
    # the second server's disk is built while the first one runs its warm phase (make test's budget)
    with ThreadPoolExecutor(max_workers=1) as pool:
        host_only_disk = pool.submit(guestdisk.debian_disk, BASE, CACHE, "uefi", "plain", "ens3-static", "list")
        sb = _boot_and_capture("bios", story_disk, host_only_disk, vm_workdir, warm=True)
    sb.figures["source_disks_seconds"] = source_seconds
    yield sb
    for c in (sb.story, sb.host_only):
        c.server.stop()
        if not KEEP:
            shutil.rmtree(c.rx, ignore_errors=True)


def _check_capture(sb: StoryBoot, cap: Captured) -> dict:
    """The capture is complete, exact, and the source untouched; its manifest."""
    con = sb.run.console
    assert con.ok and con.capture_id == sb.story.capture_id, f"the headless capture failed:\n{sb.run.explain()}"
    assert sb.run.boot.exited and sb.run.boot.exit_code == 0, f"the guest did not power off:\n{sb.run.explain()}"
    m = guest.manifest(cap.rx, cap.capture_id)
    assert m["status"] == "complete", m["status"]
    (disk,) = m["disks"]
    guest.qemu_img_compare(cap.source.image, os.path.join(cap.cap_dir, disk["image"]))
    assert guest.sha256_of(cap.source.image) == cap.source.sha256, "the source disk changed during the capture"
    return m


def _check_cutover(m: dict, figures: dict) -> None:
    """Issue 22: the ISO's capture was the cutover of the two warm syncs: it sent only the
    segments that changed since the second (the receiver's counters), and is verified as a cold
    capture is (the image equals the disk: _check_capture)."""
    assert m["phase"] == "cutover", m.get("phase")
    s1, s2 = m["syncs"]
    (disk,) = m["disks"]
    cut = disk["cutover"]
    assert all(disk["verified"].values()), disk["verified"]
    # the second sync sent only what the running server changed after the first
    assert s2["segments_changed"] < s1["segments_changed"] / 10, (s1, s2)
    assert s2["bytes_sent"] < s1["bytes_sent"] / 10, (s1, s2)
    # the cutover: only the segments that differ from the second sync's copy crossed
    rx = disk["received"]
    assert cut["segments_sent"] == disk["agent"]["segments_sent"] and cut["segments_sent"] >= 1, cut
    assert rx["data_bytes"] <= cut["segments_sent"] * disk["block_size"], (rx, cut)
    assert rx["same_bytes"] + rx["data_bytes"] + rx["zero_bytes"] == disk["size"], rx
    assert cut["bytes_sent"] < s1["bytes_sent"] / 10, (cut, s1)
    figures.update(sync1_seconds=s1["seconds"], sync1_bytes_sent=s1["bytes_sent"],
                   sync1_segments=s1["segments_changed"], sync2_seconds=s2["seconds"],
                   sync2_bytes_sent=s2["bytes_sent"], sync2_segments=s2["segments_changed"],
                   cutover_seconds=cut["seconds"], cutover_bytes_read=cut["bytes_read"],
                   cutover_bytes_sent=cut["bytes_sent"], cutover_segments=cut["segments_sent"])


def _check_prediction(m: dict, conv: dict, policy: ConvertNetwork) -> list[Fix]:
    """What the agent predicted before the capture is what the server did."""
    assert conv["network"]["policy"] == policy.value, conv["network"]
    promised = [f["id"] for f in m["readiness"]["findings"] if f["conversion"]]
    fixes = [records.decode(d, Fix, "fix") for d in conv["fixes"]]
    gaps = prediction_gaps(promised, ConvertEngine(conv["engine"]), fixes, policy)
    assert gaps.agree, (f"predicted {promised}, fixed {[f.render() for f in fixes]}: unanswered "
                        f"{list(gaps.unanswered)}, unpredicted {[f.render() for f in gaps.unpredicted]}")
    return fixes


def boot_on_cloud_nic(image: str, firmware: str, name: str, figures: dict, prefix: str = "") -> tuple[str, str]:
    """Boot a converted image as a new instance: virtio-blk, a virtio-net NIC with another MAC
    in another PCI slot on QEMU's user network (10.0.2.0/24), SeaBIOS or a fresh OVMF (new
    NVRAM vars). The guest's marker and its request must come through; (interface, address)."""
    pings = ThreadingHTTPServer(("127.0.0.1", 0), type("Pings", (_Pings,), {"seen": []}))
    threading.Thread(target=pings.serve_forever, daemon=True).start()
    token = uuid.uuid4().hex[:16]
    try:
        boot = vmboot.boot_any_accel(
            "uefi-disk" if firmware == "uefi" else "disk", expect=GUEST_PING, nic=CLOUD_NIC,
            until_exit=False, timeout=BOOT_TIMEOUT, log_dir=LOG_DIR, name=name, memory_mib=1024, marks=(GUEST_UP,),
            # One vCPU: under TCG on this loaded 2-core machine, a converted guest's two vCPUs
            # hung twice in its boot with soft lockups ("stuck for 515s" in systemd, "517s" in a
            # modprobe's uevent broadcast) until the 600 s timeout, while other boots of the
            # same images reached their ping in 41-52 s. What is proven (virtio boot, network)
            # does not depend on the vCPU count; a cloud flavor's vCPUs are the cloud's.
            cpus=1,
            extra_args=["-drive", f"file={image},format=qcow2,if=none,id=d0,snapshot=on",
                        "-device", "virtio-blk-pci,drive=d0,bootindex=0",
                        "-fw_cfg", f"name=opt/coldclone/ping,string={guest.HOST_FROM_GUEST} "
                                   f"{pings.server_address[1]} {token}"])
    finally:
        pings.shutdown()
        pings.server_close()
    tail = "\n".join(boot.console.splitlines()[-60:])
    assert GUEST_UP in boot.mark_seconds, f"the converted guest never reached multi-user.target:\n{tail}"
    assert boot.found, f"no {GUEST_PING} line within {BOOT_TIMEOUT} s:\n{tail}"
    assert f"reply=pong {token}" in boot.found_line, boot.found_line
    # the host side saw the guest's request: the network really came up
    seen = pings.RequestHandlerClass.seen
    assert len(seen) == 1 and seen[0].startswith(f"/ping/{token}/"), seen
    dev, _, addr = seen[0][len(f"/ping/{token}/"):].partition("/")
    figures[f"{prefix}boot_to_marker_seconds"] = round(boot.mark_seconds[GUEST_UP], 1)
    figures[f"{prefix}boot_to_ping_seconds"] = round(boot.marker_seconds or -1, 1)
    figures[f"{prefix}boot_accel"] = boot.accel
    return dev, addr


# ----------------------------------------------------------------------------- (a) the story
# CI budget: the BIOS story shares its ISO boot with (b) and (c); the UEFI story (its own OVMF
# boot of the ISO) runs only with -m slow or `make vm`.
@pytest.mark.parametrize("firmware", ["bios", pytest.param("uefi", marks=pytest.mark.slow)])
def test_debian_server_captured_converted_published_boots_on_virtio(firmware, request, vm_workdir, tmp_path):
    t_all = time.monotonic()
    if firmware == "bios":
        sb = request.getfixturevalue("bios_story")
    else:
        _story_prereqs(firmware)
        sb = _boot_and_capture("uefi", guestdisk.debian_disk(BASE, CACHE, "uefi"), None, vm_workdir)
        request.addfinalizer(sb.story.server.stop)
    figures = dict(sb.figures)
    cap = sb.story
    try:
        con = sb.run.console
        m = _check_capture(sb, cap)
        name = guest.inventory_disk_by_serial(con.inventory or {}, STORY_SERIAL)["name"]
        assert name.startswith("sd"), f"the SATA disk is {name} in the live system"
        (mdisk,) = m["disks"]
        if firmware == "bios":
            _check_cutover(m, figures)
            # the capture keeps the name the server's own OS gave the disk at the warm syncs,
            # whatever the ISO's kernel calls it (CI met sdb); its source facts say today's
            assert (mdisk["name"], mdisk["source"]["name"]) == ("sda", name), mdisk
            figures["iso_disk_name"] = name
        else:
            assert mdisk["name"] == name, mdisk
        captured = mdisk["name"]
        converted = os.path.join(cap.cap_dir, f"{captured}.kvm.qcow2")
        # the agent's summary says where the converted image will be (the receiver's typed answer)
        assert "conversion queued on the conversion server (coldclone-convert)" in con.text, \
            con.excerpt("complete in")
        assert any(l.split(None, 1)[-1] == converted for l in con.lines), con.excerpt("conversion queued")
        # discovery's NIC inventory: the server's e1000 as the live system found it
        (nic,) = [n for n in (con.inventory or {}).get("nics", []) if n["mac"] == SOURCE_MAC]
        assert (nic["driver"], nic["pci_slot"]) == ("e1000", "0000:00:03.0"), nic
        assert nic["operstate"] == "up" and nic["speed_mbps"] == 1000, nic

        # --- the queued conversion (default --network dhcp)
        t_captured = time.monotonic()
        m = _wait_for_conversion(cap.cap_dir, CONVERT_TIMEOUT)
        figures["conversion_wait_seconds"] = round(time.monotonic() - t_captured, 1)
        conv = m["conversion"]
        out = open(os.path.join(cap.cap_dir, "conversion.out"), errors="replace").read()
        assert conv["result"] == "converted", f"{conv['message']}\n{out[-3000:]}"
        assert conv["engine"] == ConvertEngine.FIXUPS.value
        assert [i["image"] for i in conv["images"]] == [os.path.basename(converted)], conv["images"]
        figures["conversion_seconds"] = conv["seconds"]
        figures["conversion_accel"] = conv["accel"]
        guest.qemu_img_compare(cap.source.image, os.path.join(cap.cap_dir, f"{captured}.qcow2"))   # evidence kept

        ready = m["readiness"]
        # the root disk by the capture's name (the agent inspected it as `name`)
        assert ready["disk"] == captured and ready["firmware"] == firmware, ready
        fixes = _check_prediction(m, conv, ConvertNetwork.DHCP)
        promised = {f["id"] for f in ready["findings"] if f["conversion"]}
        # this disk's known faults (fstab and root= by sdX names, eth0 only by its MAC rule)
        assert {"fstab-device-names", "bootloader-root-device", "persistent-net-rules", "primary-nic"} <= promised
        assert ready["network"]["primary"] == "eth0" and ready["network"]["styles"] == ["ifupdown"]
        net = conv["network"]
        assert (net["primary"], net["name"], net["method"], net["style"]) == ("eth0", "eth0", "dhcp", "ifupdown"), net
        assert any(f.kind.value == "kernel-net-ifnames" and f.path == "/boot/grub/grub.cfg" for f in fixes)
        if firmware == "uefi":
            assert "uefi-removable-loader" in promised
        figures["fixes"] = "; ".join(f.render() for f in fixes)

        publish_download_boot(cap.cap_dir, converted, str(tmp_path), firmware, figures)
    finally:
        figures["test_wall_seconds"] = round(time.monotonic() - t_all, 1)
        _write_figures(firmware, figures)


def publish_download_boot(cap_dir: str, converted: str, work: str, firmware: str, figures: dict) -> None:
    """Publish the converted capture to a real Glance, download it back with openstacksdk and
    boot it on virtio-blk + virtio-net as Nova would from the image's properties (a UEFI image:
    OVMF on q35, a fresh NVRAM): the guest's marker and its request must come through, on eth0."""
    glance = tglance.Glance(workdir=os.path.join(work, "glance")).start()
    try:
        clouds = glance.write_clouds_yaml(os.path.join(work, "clouds.yaml"), cloud="story")
        t = time.monotonic()
        r = subprocess.run([os.path.join(BIN, "coldclone-publish"), cap_dir, "--cloud", "story"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OS_CLIENT_CONFIG_FILE": clouds})
        figures["publish_seconds"] = round(time.monotonic() - t, 1)
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(l for l in r.stdout.splitlines() if l.startswith("COLDCLONE-PUBLISH-OK "))
        image_id = dict(w.split("=", 1) for w in line.split()[1:])["image_id"]
        img = requests.get(f"{glance.url}/v2/images/{image_id}", timeout=10).json()
        assert img["status"] == "active"
        assert (img["disk_format"], img["hw_disk_bus"], img["hw_vif_model"]) == ("qcow2", "virtio", "virtio")
        if firmware == "uefi":
            assert (img.get("hw_firmware_type"), img.get("hw_machine_type")) == ("uefi", "q35"), img
        else:
            assert img.get("hw_firmware_type") in (None, "bios"), img.get("hw_firmware_type")
        got = os.path.join(work, "from-glance.qcow2")
        t = time.monotonic()
        _download(clouds, "story", image_id, got)
        figures["download_seconds"] = round(time.monotonic() - t, 1)
        assert guest.sha256_of(got) == guest.sha256_of(converted), "Glance gave back other bytes"
        assert img["os_hash_value"] == _sha512(got)
        dev, addr = boot_on_cloud_nic(got, "uefi" if img.get("hw_firmware_type") == "uefi" else "bios",
                                      f"vm-story-{firmware}-converted", figures)
        # the udev rule for the old MAC is gone and net.ifnames=0 names the virtio NIC eth0:
        # ifupdown's DHCP on eth0 got QEMU's lease
        assert (dev, addr) == ("eth0", "10.0.2.15/24"), (dev, addr)
    finally:
        glance.cleanup()


# ------------------------------------------------- (b) and (c): ens3, static, host-only, UEFI
@pytest.fixture(scope="module")
def host_only_keep(bios_story) -> dict:
    """The receiver's own conversion of the host-only disk (--network keep), its manifest."""
    sb = bios_story
    cap = sb.host_only
    m0 = _check_capture(sb, cap)
    assert m0["disks"][0]["mode"] == "used"
    t = time.monotonic()
    m = _wait_for_conversion(cap.cap_dir, CONVERT_TIMEOUT)
    sb.figures["host_only_conversion_wait_seconds"] = round(time.monotonic() - t, 1)
    return m


def _host_only_findings(m: dict) -> dict:
    ready = m["readiness"]
    assert ready["firmware"] == "uefi" and ready["network"]["primary"] == "ens3", ready
    return {f["id"]: f for f in ready["findings"]}


def test_ens3_static_host_only_uefi_server_keeps_its_address(bios_story, host_only_keep, tmp_path):
    """(b) --network keep: the instance answers from the server's own static address."""
    t_all = time.monotonic()
    figures = dict(bios_story.figures)
    cap, m = bios_story.host_only, host_only_keep
    try:
        conv = m["conversion"]
        out = open(os.path.join(cap.cap_dir, "conversion.out"), errors="replace").read()
        assert conv["result"] == "converted", f"{conv['message']}\n{out[-3000:]}"
        figures["conversion_seconds"], figures["conversion_timings"] = conv["seconds"], conv["timings"]
        found = _host_only_findings(m)
        # readiness saw all three: the slot name and its static address, the host-only initramfs,
        # and a loader a fresh firmware cannot find
        assert {"primary-nic", "static-ip", "initramfs-virtio", "uefi-removable-loader"} <= set(found), sorted(found)
        assert "ens3 is the name udev derives from the old NIC's PCI slot" in found["primary-nic"]["detail"]
        assert found["uefi-removable-loader"]["conversion"] == "copy \\EFI\\debian\\grubx64.efi to \\EFI\\BOOT\\BOOTX64.EFI"
        fixes = _check_prediction(m, conv, ConvertNetwork.KEEP)
        kinds = {f.kind.value for f in fixes}
        assert {"kernel-net-ifnames", "network-primary-renamed", "uefi-removable-loader",
                "initramfs-virtio-modules", "initramfs-rebuilt"} <= kinds, sorted(kinds)
        assert "network-primary-dhcp" not in kinds
        net = conv["network"]
        assert (net["primary"], net["name"], net["method"], net["addresses"], net["gateway"]) == (
            "ens3", "eth0", "static", ["10.0.2.77/24"], "10.0.2.2"), net
        rebuilt = next(f for f in fixes if f.kind.value == "initramfs-rebuilt")
        assert rebuilt.before.startswith("virtio none") and "virtio_blk" in rebuilt.after, rebuilt
        figures["fixes"] = "; ".join(f.render() for f in fixes)
        image = os.path.join(cap.cap_dir, conv["images"][0]["image"])
        dev, addr = boot_on_cloud_nic(image, "uefi", "vm-host-only-keep", figures)
        assert (dev, addr) == ("eth0", "10.0.2.77/24"), (dev, addr)
    finally:
        figures["test_wall_seconds"] = round(time.monotonic() - t_all, 1)
        _write_figures("host-only-keep", figures)


def test_ens3_static_host_only_uefi_server_with_network_dhcp(bios_story, host_only_keep, tmp_path):
    """(c) the same capture converted with --network dhcp: the instance takes the cloud's lease."""
    t_all = time.monotonic()
    figures: dict = {}
    cap, m0 = bios_story.host_only, host_only_keep
    try:
        r = subprocess.run([os.path.join(BIN, "coldclone-convert"), cap.cap_dir, "--engine", "fixups",
                            "--network", "dhcp"], capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        with open(os.path.join(cap.cap_dir, "manifest.json")) as f:
            m = json.load(f)
        assert m["readiness"] == m0["readiness"]
        conv = m["conversion"]
        figures["conversion_seconds"], figures["conversion_timings"] = conv["seconds"], conv["timings"]
        fixes = _check_prediction(m, conv, ConvertNetwork.DHCP)
        dhcp = [f for f in fixes if f.kind.value == "network-primary-dhcp"]
        assert [(f.before, f.after) for f in dhcp][:1] == [("inet static", "inet dhcp")], dhcp
        assert conv["network"]["method"] == "dhcp" and conv["network"]["addresses"] == [], conv["network"]
        guest.qemu_img_compare(cap.source.image, os.path.join(cap.cap_dir, m["disks"][0]["image"]))
        image = os.path.join(cap.cap_dir, conv["images"][0]["image"])
        dev, addr = boot_on_cloud_nic(image, "uefi", "vm-host-only-dhcp", figures)
        assert (dev, addr) == ("eth0", "10.0.2.15/24"), (dev, addr)
    finally:
        figures["test_wall_seconds"] = round(time.monotonic() - t_all, 1)
        _write_figures("host-only-dhcp", figures)


def _sha512(path: str) -> str:
    import hashlib

    h = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
