"""Headless capture to an NFS export, in QEMU: the guest mounts nfs://10.0.2.2:PORT/... itself.

The NFS server is nfs-ganesha (userspace, NFSv4 only) on the host's 127.0.0.1, which
QEMU's user networking shows the guest as 10.0.2.2 (the host kernel here has no NFS
server or client of its own). The guest's live system mounts the export with mount.nfs,
calibrates against it (the probe must leave nothing there), captures, converts to qcow2
locally with the ISO's qemu-img, and powers off; the test compares the image
on the export with the source. The ISO boots as a USB stick under OVMF on q35 (GPT EFI
partition -> GRUB EFI): this capture's boot proves that boot path too.

Needs: apt-get install nfs-ganesha nfs-ganesha-vfs, and a built ISO (make iso).
Run: pytest -m vm tests/vm/test_nfs.py -s
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from agent.runcmd import run as run_cmd

from . import guest
from .conftest import LOG_DIR, TIMEOUT, _skip_unless_ready
from tests.testbed.procs import free_port, start_daemon, stop_process

pytestmark = [pytest.mark.vm, pytest.mark.root]

GANESHA_CONF = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    Lease_Lifetime = 20;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = /export;
    Protocols = 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


class Ganesha:
    """nfs-ganesha on 127.0.0.1:port exporting one directory as /export (NFSv4, rw, no squash)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.export = os.path.join(workdir, "export")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Ganesha":
        os.makedirs(self.export, exist_ok=True)
        os.chmod(self.export, 0o755)
        conf = os.path.join(self.workdir, "ganesha.conf")
        with open(conf, "w") as f:
            f.write(GANESHA_CONF.format(port=self.port, export=self.export))
        self.log = os.path.join(self.workdir, "ganesha.log")
        # it writes its own log (-L)
        self.proc = start_daemon([shutil.which("ganesha.nfsd"), "-F", "-L", self.log, "-f", conf,
                                  "-p", os.path.join(self.workdir, "ganesha.pid")],
                                 "nfs-ganesha", ("127.0.0.1", self.port), self.log, timeout=30)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 15)


@pytest.fixture(scope="module")
def ganesha(tmp_path_factory):
    if not shutil.which("ganesha.nfsd"):
        pytest.skip("nfs-ganesha is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs)")
    d = str(tmp_path_factory.mktemp("nfs"))
    os.chmod(d, 0o755)
    g = Ganesha(d).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def nfs_capture(ganesha, tmp_path_factory):
    _skip_unless_ready("uefi-usb")
    d = tmp_path_factory.mktemp("nfs-src")
    src = guest.os_disk(str(d / "nfs-os.img"), serial="cc-os", table="gpt", size_mb=256,
                        files_mb=24, remnant_mb=8)
    caps = os.path.join(ganesha.export, "captures")
    os.makedirs(caps)
    url = f"nfs://10.0.2.2:{ganesha.port}/export/captures?vers=4.2"
    cmdline = " ".join([f"coldclone.server={url}", "coldclone.capture_id=vm-nfs", "coldclone.progress=5",
                        "coldclone.disks=vda",
                        "coldclone.calibrate=2"])
    run = guest.boot_headless("uefi-usb", cmdline, extra_args=guest.disk_args([src]), timeout=TIMEOUT,
                              name="vm-nfs", log_dir=LOG_DIR)
    print(f"\n{run.times()}")
    return run, src, caps


def test_boot_hybrid_usb_stick_uefi(nfs_capture):
    """The ISO as a raw USB stick under OVMF (q35, the GPT EFI partition -> GRUB EFI)."""
    run, _, _ = nfs_capture
    print("\n  " + guest.assert_boot_path(run, "uefi-usb"))


def test_headless_capture_to_nfs_equals_source(nfs_capture, ganesha):
    run, src, caps = nfs_capture
    con = run.console
    assert not run.boot.timed_out, f"no result within {TIMEOUT:.0f} s:\n{run.explain()}"
    assert con.ok, f"the headless run did not succeed:\n{run.explain()}\n--- ganesha ---\n" \
                   + open(ganesha.log).read()[-2000:]
    assert con.capture_id == "vm-nfs"
    # The estimate named NFS over the guest's NIC and was calibrated against the export.
    est = con.estimate
    assert est and est["link"]["kind"] == "nfs", est
    assert est["calibrated"] is True, est.get("notes")
    # Nothing but the capture on the export: no probe file, no .nfsXXXX left behind.
    assert os.listdir(caps) == ["vm-nfs"], os.listdir(caps)
    m = guest.manifest(caps, "vm-nfs")
    assert m["status"] == "complete"
    name = guest.inventory_disk_by_serial(con.inventory, "cc-os")["name"]
    d = guest.manifest_disk(m, name)
    # qcow2 made in the guest (the default format), checked there and again here
    assert d["format"] == "qcow2" and d["verified"]["readback_digest"] and d["verified"]["qemu_img_check"]
    run_cmd(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", src.image, os.path.join(caps, "vm-nfs", d["image"])])
    assert guest.sha256_of(src.image) == src.sha256
    assert m["estimate"]["link"]["kind"] == "nfs"
    ev = m["estimate_vs_actual"]
    print(f"NFS capture: predicted {ev['predicted_seconds']} s, receiver took {ev['actual_seconds']} s "
          f"(TCG guest); {d['size'] >> 20} MiB -> {d['image']}")
