"""The whole story on a real bootable Debian disk (BIOS/MBR, fstab and GRUB root= by /dev/sda
names, a MAC-bound udev rule, ifupdown DHCP on eth0): capture by the real receiver, convert,
then boot the converted image on virtio-blk + virtio-net and watch the serial console reach
the login prompt.

SLOW (marked `slow`, not in the default run, nor in `make test`): building the disk takes ~4 min
(debootstrap base from the live ISO build cache + linux-image + grub-pc, cached in /var/tmp),
a virt-v2v run under TCG tens of minutes, a TCG boot minutes. Run with
`make convert-slow` or `.venv/bin/pytest -q -s -m slow tests/integration/test_convert_v2v.py`.
"""

import json
import os
import subprocess
import time

import pytest

from tests.conftest import BIN, REPO, sha256_of
from tests.testbed import guestdisk
from tests.testbed.bootlogin import boot_to_login

pytestmark = [pytest.mark.root, pytest.mark.slow]

CACHE = os.environ.get("COLDCLONE_CONVERT_CACHE", "/var/tmp/coldclone-convert")
BASE = os.path.join(REPO, "livecd", "build", "cache", "base-bookworm-amd64.tar.zst")


@pytest.fixture(scope="module")
def debian_capture(tmp_path_factory):
    if not os.path.isfile(BASE):
        pytest.skip(f"{BASE} missing: build the live ISO once (make iso) for its debootstrap cache")
    disk = guestdisk.debian_disk(BASE, CACHE)
    root = str(tmp_path_factory.mktemp("rx"))
    return guestdisk.make_capture(root, "deb12", {"sda": disk})


@pytest.mark.parametrize("engine", ["fixups", "virt-v2v"])
def test_debian_converts_and_boots_on_virtio(debian_capture, engine, tmp_path):
    cap = debian_capture
    evidence = sha256_of(os.path.join(cap, "sda.qcow2"))
    t = time.monotonic()
    r = subprocess.run([os.path.join(BIN, "coldclone-convert"), cap, "--engine", engine],
                       capture_output=True, text=True, timeout=4 * 3600)
    took = time.monotonic() - t
    print(r.stdout, f"{engine}: {took:.0f} s", sep="\n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha256_of(os.path.join(cap, "sda.qcow2")) == evidence
    c = json.load(open(os.path.join(cap, "manifest.json")))["conversion"]
    print("timings:", json.dumps(c["timings"]), "warnings:", c["warnings"])
    kinds = sorted(f["kind"] for f in c["fixes"])
    assert kinds.count("fstab-device-name") == 2 and "kernel-root-device" in kinds
    assert "udev-net-rule-mac" in kinds
    seconds = boot_to_login(os.path.join(cap, "sda.kvm.qcow2"), str(tmp_path / "serial.log"))
    print(f"{engine}: converted guest reached login: on virtio in {seconds:.0f} s")
