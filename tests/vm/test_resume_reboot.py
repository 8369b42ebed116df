"""A source server that loses power mid-capture resumes its capture on its own when it boots the
ISO again (issue 14, `coldclone.resume=auto`, the headless default).

The story, all real: the live ISO boots in QEMU with one virtio disk of incompressible data that
has a serial (CCRESUME0001), and captures headless to the host's sshd, with no capture id on the
kernel command line (the agent makes one up, and it dies with the RAM) and `reconnect=0`. When
half the disk has reached the receiver, the test kills QEMU with SIGKILL: a power cut of the
source; the receiver sees its session cut and keeps what its journal vouches for. The second boot
has the same disk and the same command line: the agent asks the server for unfinished captures of
its disks, finds the first one by the disk's serial, resumes it, and sends only the rest.

Run: pytest -m vm tests/vm/test_resume_reboot.py -s   (figures and times are printed)
Knob: COLDCLONE_VM_RESUME_MB (the disk's size, default 256).
"""
from __future__ import annotations

import json
import os
import time

import pytest

from agent.server.receive.journal import CHECKPOINT_BYTES
from tests.testbed.resume import image_bytes

from . import guest
from .conftest import LOG_DIR, TIMEOUT, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

MiB = 1 << 20
SERIAL = "CCRESUME0001"
SIZE = int(os.environ.get("COLDCLONE_VM_RESUME_MB", 256)) * MiB
# What may arrive twice: the receiver's unjournaled tail (one checkpoint interval of data) plus
# the chunk in flight when the session was cut.
WINDOW = CHECKPOINT_BYTES + 4 * MiB
# The receiver notices a cut session (sshd sees the dead TCP peer) and writes failure.json.
CUT_NOTICED_SECONDS = 60


def _partials(rx: str) -> list[str]:
    return sorted(n for n in os.listdir(rx) if n.endswith(".partial"))


def _wait_for_failure_record(partial: str) -> tuple[dict, float]:
    """The receiver's failure.json once it has ended the cut session, and how long that took."""
    path = os.path.join(partial, "failure.json")
    t0 = time.monotonic()
    deadline = t0 + CUT_NOTICED_SECONDS
    while not os.path.exists(path):
        assert time.monotonic() < deadline, (
            f"the receiver did not end its session within {CUT_NOTICED_SECONDS} s of the power cut "
            f"(no {path}); in {partial}: {sorted(os.listdir(partial))}")
        time.sleep(0.5)
    with open(path) as f:
        return json.load(f), time.monotonic() - t0


def test_rebooted_source_resumes_its_capture(vm_workdir, vm_server):
    """Power cut at ~50 %, same boot again: the first capture is found by serial and finished;
    only the missing part is sent; the qcow2 equals the source, which is unchanged."""
    _skip_unless_ready("kernel")
    src = guest.random_disk(os.path.join(vm_workdir, "resume-src.img"), serial=SERIAL, size_mb=SIZE // MiB)
    rx = vm_server.new_dir("vm-resume")
    fw, identity = guest.fwcfg_file("identity", vm_server.identity)
    # no capture id: each boot makes one up; the lookup has to find the first one by the disk
    cmdline = guest.headless_cmdline(vm_server, rx, None, identity,
                                     "coldclone.reconnect=0 coldclone.compress=none")
    qemu = fw + ["-machine", "q35"] + guest.disk_args([src])

    def half_arrived() -> bool:
        return any(image_bytes(rx, p[:-len(".partial")]) >= SIZE // 2 for p in _partials(rx))

    # Boot 1: cut at half
    run1 = guest.boot_headless("kernel", cmdline, extra_args=qemu, timeout=TIMEOUT, name="vm-resume-1",
                               log_dir=LOG_DIR, stop_when=half_arrived)
    print(f"\n{run1.times()}")
    con1 = run1.console
    assert run1.boot.stopped_seconds is not None, (
        f"the capture never had half of the disk on the server, so there was nothing to cut:\n{run1.explain()}")
    # The guest sees the serial QEMU gave the disk (the lookup matches by it)
    assert con1.inventory, f"{con1.inventory_problem}\n{run1.explain()}"
    disk = guest.inventory_disk_by_serial(con1.inventory, SERIAL)
    assert disk.get("serial") == SERIAL, f"the guest's inventory has serial {disk.get('serial')!r}: {disk}"
    name = disk["name"]
    partials = _partials(rx)
    assert len(partials) == 1, partials
    first_id = partials[0][:-len(".partial")]
    assert any(l.startswith(f"coldclone: capture {first_id} -> ") for l in con1.lines), run1.explain()
    partial = os.path.join(rx, partials[0])
    failure, noticed = _wait_for_failure_record(partial)
    arrived = image_bytes(rx, first_id)        # all of it: the receiver has ended
    assert failure["resumable"] is True, failure
    held = failure["held"][name]
    assert 0 < held <= arrived, (held, arrived, failure)
    assert arrived - held <= WINDOW, f"{arrived - held} bytes arrived beyond the journal's last checkpoint"

    # Boot 2: the same server boots the ISO again, the same command line
    run2 = guest.boot_headless("kernel", cmdline, extra_args=qemu, timeout=TIMEOUT, name="vm-resume-2",
                               log_dir=LOG_DIR)
    print(run2.times())
    con2 = run2.console
    assert not run2.boot.timed_out, f"no result within {TIMEOUT:.0f} s:\n{run2.explain()}"
    assert any(l.startswith(f"coldclone: resuming unfinished capture {first_id}: ") for l in con2.lines), \
        con2.excerpt("unfinished")
    assert con2.ok, f"the resumed capture did not succeed:\n{run2.explain()}"
    assert con2.capture_id == first_id, con2.capture_id
    assert run2.boot.exited and run2.boot.exit_code == 0, run2.explain()
    assert not os.path.exists(partial), "the finished capture left its .partial behind"
    m = guest.manifest(rx, first_id)
    assert m["status"] == "complete"
    d = guest.manifest_disk(m, name)
    assert d["verified"]["qemu_img_check"]
    # what the agent read from the guest's sysfs (capture.source.probe), and so what the lookup
    # found the first capture's journal by
    assert d["source"].get("serial") == SERIAL, d["source"]
    resume = d["resume"]
    # exactly where the server's journal said it held up to, and not started over
    assert resume["resumed_from"] == held, (resume, held)
    assert resume["restarted"] is None, resume
    guest.qemu_img_compare(src.image, os.path.join(rx, first_id, d["image"]))
    sent = d["received"]["data_bytes"]
    assert SIZE - held <= sent <= SIZE - held + WINDOW, (sent, SIZE, held)
    assert guest.sha256_of(src.image) == src.sha256, f"the source image {src.image} changed"
    t1 = run1.boot.stopped_seconds
    t2 = run2.boot.exit_seconds
    print(f"  {name} ({SIZE // MiB} MiB, serial {SERIAL}): boot 1 cut after {t1:.0f} s with "
          f"{arrived / MiB:.1f} MiB arrived, {held / MiB:.1f} MiB held (failure.json {noticed:.1f} s after "
          f"the cut); boot 2 found {first_id} by serial, "
          f"sent {sent / MiB:.1f} MiB in {t2:.0f} s (headless run {run2.capture_seconds:.0f} s); "
          f"received twice {(arrived + sent - SIZE) / MiB:.1f} MiB; qemu-img compare: identical")
