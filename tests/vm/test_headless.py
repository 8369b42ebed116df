"""Headless capture from the kernel command line, in QEMU, to a real sshd on the host.

The live ISO boots (BIOS: SeaBIOS -> isolinux; UEFI: OVMF -> GRUB EFI) with
``coldclone.server=ssh://coldclone-rx@10.0.2.2:PORT/...``, the sshd's host key pinned with
``coldclone.hostkey=SHA256:...`` and the agent's key handed over by QEMU's fw_cfg (never baked
into the ISO). The guest captures, the forced-command receiver writes a qcow2, the guest powers
off by itself, and the test compares the qcow2 with the source image byte for byte.
The shared boots live in conftest.py (bios_capture, uefi_capture).

Run: pytest -m vm tests/vm/test_headless.py -s   (boot and capture times are printed)
"""
from __future__ import annotations

import os

import pytest

from tests.testbed.procs import free_port

from . import guest
from .conftest import LOG_DIR, TIMEOUT, Capture

pytestmark = [pytest.mark.vm, pytest.mark.root]


def assert_captured_and_powered_off(cap: Capture, serial: str) -> None:
    run, con = cap.run, cap.run.console
    assert not run.boot.timed_out, f"no result within {TIMEOUT:.0f} s:\n{run.explain()}"
    assert con.ok, f"the headless run did not succeed:\n{run.explain()}"
    assert con.capture_id == cap.capture_id, con.capture_id
    # on_done=poweroff (the default): QEMU exits on its own (-no-reboot), rc 0
    assert run.boot.exited, f"the guest did not power off by itself:\n{run.explain()}"
    assert run.boot.exit_code == 0, f"QEMU exited with {run.boot.exit_code}:\n{run.explain()}"
    src = cap.disks[serial]
    name = cap.guest_name(serial)
    m = cap.manifest()
    assert m["status"] == "complete"
    d = guest.manifest_disk(m, name)
    assert d["format"] == "qcow2" and d["verified"]["qemu_img_check"]
    qcow2 = os.path.join(cap.cap_dir, d["image"])
    guest.qemu_img_compare(src.image, qcow2)        # raises with qemu-img's words if not equal
    assert d["size"] == os.path.getsize(src.image)
    # the agent set the source read-only; nothing in the live system wrote to it
    assert guest.sha256_of(src.image) == src.sha256, f"the source image {src.image} changed during the run"
    # the manifest carries the guest's own inventory
    inv = m["source"].get("inventory")
    assert inv and guest.inventory_disk_by_serial(inv, serial)["name"] == name
    print(f"{run.times()}\n  {name}: {d['size'] >> 20} MiB -> {d['image']} "
          f"({d['image_bytes_allocated'] >> 20} MiB allocated), qemu-img compare: identical")


def test_bios_headless_capture_equals_source(bios_capture):
    """SeaBIOS + isolinux: the GPT disk (/boot, swap, / with files and fstab) to the host's sshd."""
    assert_captured_and_powered_off(bios_capture, "cc-os")


def test_uefi_headless_capture_equals_source(uefi_capture):
    """OVMF + GRUB EFI: the MBR disk to the host's sshd."""
    assert_captured_and_powered_off(uefi_capture, "cc-os")


def test_headless_prints_inventory_and_estimate(uefi_capture):
    """The console contract: inventory and estimate as JSON, the same inventory in the manifest."""
    con = uefi_capture.run.console
    assert con.inventory and con.inventory.get("disks"), f"{con.inventory_problem}\n{uefi_capture.run.explain()}"
    assert any(l.startswith("coldclone: will capture: ") for l in con.lines), uefi_capture.run.explain()
    assert con.estimate is not None, f"{con.estimate_problem}:\n" + con.excerpt("will capture")
    est_disks = {d["name"] for d in con.estimate["disks"]}
    assert uefi_capture.guest_name("cc-os") in est_disks, con.estimate["disks"]
    assert con.estimate["total_seconds"] > 0
    m = uefi_capture.manifest()
    assert m["source"]["inventory"]["disks"] == con.inventory["disks"]
    print(f"\n  estimate: {con.estimate['total_seconds']:.0f} s ({con.estimate['bottleneck']}); "
          f"headless run took {uefi_capture.run.capture_seconds:.0f} s")


def test_boot_bios_isolinux_cdrom(bios_capture):
    """SeaBIOS -> El Torito -> isolinux -> default entry, args via fw_cfg: the BIOS capture's
    own boot proves the path (it used to cost a smoke boot of its own)."""
    print("\n  " + guest.assert_boot_path(bios_capture.run, "bios"))


def test_boot_uefi_grub_cdrom(uefi_capture):
    """OVMF -> El Torito EFI image -> GRUB EFI -> default entry, args via fw_cfg."""
    print("\n  " + guest.assert_boot_path(uefi_capture.run, "uefi"))


def _failure_boot(name: str, cmdline: str, extra_args: list[str] | None = None,
                  shell: bool = False) -> guest.Run:
    run = guest.boot_headless("kernel", cmdline, extra_args=extra_args, timeout=TIMEOUT, name=name,
                              log_dir=LOG_DIR, expect_failure=True, shell=shell)
    print(f"\n{run.times()}")
    assert not run.boot.timed_out, f"no rescue shell within {TIMEOUT:.0f} s:\n{run.explain()}"
    con = run.console
    assert con.failed, f"no COLDCLONE-HEADLESS-FAILED line:\n{run.explain()}"
    # a failed run leaves a root shell with the log on the serial console, not a hung screen
    assert "the headless capture FAILED" in con.text, run.explain()
    assert "/var/log/coldclone/headless.log" in con.text, run.explain()
    assert run.boot.found, f"no root shell prompt on the serial console:\n{run.explain()}"
    return run


@pytest.fixture(scope="module")
def typo_boot(ready_kernel, vm_server, vm_workdir):
    """One kernel-path boot whose command line has two misspelt keys and nothing else of ours:
    coldclone.sever= (for server=) and coldclone.dsks= (for disks=). Its rescue shell stays up
    for the next test (the agent's key and a small disk are attached for it)."""
    fw, identity = guest.fwcfg_file("identity", vm_server.identity)
    disk = guest.pattern_disk(os.path.join(vm_workdir, "typo-small.img"), serial="cc-small", size_mb=16)
    run = _failure_boot("vm-typo", "coldclone.sever=ssh://nobody@192.0.2.1/srv/coldclone coldclone.dsks=all",
                        extra_args=fw + guest.disk_args([disk]), shell=True)
    run.identity = identity
    try:
        yield run
    finally:
        if run.shell is not None:
            run.shell.close()


def test_headless_failure_leaves_a_root_shell_on_serial(typo_boot):
    """Any coldclone.* key starts coldclone-headless.service, even a misspelt coldclone.server=
    (otherwise the typo would silently start the TUI); `coldclone headless` fails with exit 2,
    and coldclone-rescue.service must then say so on the serial console and leave a root shell
    there (in headless mode serial-getty is off: a root prompt can only come from the rescue
    shell; _failure_boot asserts the prompt, the FAILED line and the log's path)."""
    con = typo_boot.console
    assert con.exit_code == 2, f"exit {con.exit_code}: {con.message}"


def test_typo_in_a_key_is_named_with_a_suggestion(typo_boot):
    """Each misspelt key is named with the key it was probably meant to be, before anything
    else runs (DESIGN: unknown keys -> clear message, non-zero exit)."""
    con = typo_boot.console
    for typo, meant in (("sever", "server"), ("dsks", "disks")):
        want = f"unknown kernel command line key coldclone.{typo}; did you mean coldclone.{meant}?"
        assert any(want in l for l in con.lines), con.excerpt(guest.FAILED_LINE, before=8, after=1)
    # nothing was touched before the command line was found wrong
    assert con.inventory is None, "discovery ran although the command line is wrong"
    print(f"  console: {con.excerpt(guest.FAILED_LINE, before=3, after=1).strip()}")


def test_unreachable_server_is_a_clear_connection_error(typo_boot, vm_server):
    """Nothing listens on the port: exit 3 and a message naming the server, within the timeout.
    Run in the root shell the typo boot left (`coldclone headless --cmdline`, the same parser
    and job as the boot's own run): the live system, the agent's key, a disk to capture (else
    the run stops at "no disk to capture" before connecting)."""
    assert typo_boot.shell is not None, f"no root shell to go on in:\n{typo_boot.explain()}"
    port = free_port()                      # bound and released: nothing listens there
    words = (f"coldclone.server={vm_server.url('/', port=port)} coldclone.identity={typo_boot.identity} "
             f"coldclone.hostkey={vm_server.fingerprint} coldclone.timeout=10 coldclone.disks=vda")
    rc, out = typo_boot.shell.headless(words)
    con = guest.parse_console(out)
    assert rc == 3 and con.exit_code == 3, f"exit {rc}: {con.message}\n{out[-2000:]}"
    assert f"{guest.HOST_FROM_GUEST}" in con.message and str(port) in con.message, con.message
    print(f"  console: {con.excerpt(guest.FAILED_LINE, before=1, after=1).strip()}")
