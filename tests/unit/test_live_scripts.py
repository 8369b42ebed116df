"""The live image's shell helpers (livecd/rootfs/usr/lib/coldclone-live/lib.sh), run under
/bin/sh as on the ISO, with the kernel command line replaced by the test's own.

Which mode a boot takes is decided here, before any Python runs: a wrong answer starts the
TUI on a server that was meant to run unattended, or hides a typo. The VM tier proves the
same on real boots; these pin every case in milliseconds."""

import os
import subprocess

import pytest

LIB = os.path.join(os.path.dirname(__file__), "..", "..",
                   "livecd", "rootfs", "usr", "lib", "coldclone-live", "lib.sh")


def sh(script: str, cmdline: str = "", stdin: str = "", *args: str) -> subprocess.CompletedProcess:
    prog = f'. "{LIB}"\ncc_cmdline() {{ printf "%s\\n" "$CMDLINE"; }}\n{script}'
    return subprocess.run(["sh", "-c", prog, "sh", *args], input=stdin, text=True,
                          capture_output=True, env={"PATH": os.environ["PATH"], "CMDLINE": cmdline})


@pytest.mark.parametrize("cmdline, headless", [
    ("BOOT_IMAGE=/live/vmlinuz boot=live quiet", False),
    ("boot=live console=ttyS0,115200 coldclone.tui", False),
    ("boot=live coldclone.smoke=1 coldclone.smoke_done=poweroff", False),
    ("boot=live coldclone.server=ssh://cc@10.0.0.5/srv", True),
    # a misspelt key must reach `coldclone headless`, which names it
    ("boot=live coldclone.sever=ssh://cc@10.0.0.5/srv", True),
    ("boot=live coldclone.estimate_only", True),
    # coldclone.tui wins: the TUI starts, prefilled from the other keys
    ("boot=live coldclone.tui coldclone.server=ssh://cc@10.0.0.5/srv", False),
    ("boot=live coldclone.server=ssh://cc@10.0.0.5/srv coldclone.tui=1", False),
    # not ours: a word that merely contains the prefix
    ("boot=live xcoldclone.server=1", False),
    # after `--` the words are init's, not the kernel's parameters
    ("boot=live -- coldclone.server=ssh://cc@10.0.0.5/srv", False),
    ("boot=live coldclone.server=ssh://cc@10.0.0.5/srv -- coldclone.tui", True),
])
def test_mode_is_decided_by_any_coldclone_key(cmdline, headless):
    r = sh("cc_headless", cmdline)
    assert (r.returncode == 0) is headless, (cmdline, r)


def test_arg_takes_the_last_value_and_reports_absence():
    r = sh('cc_arg coldclone.on_done; echo " rc=$?"; cc_arg coldclone.ip; echo " rc=$?"',
           "coldclone.on_done=reboot boot=live coldclone.on_done=shell")
    assert r.stdout.splitlines() == ["shell rc=0", " rc=1"]


def test_fanout_copies_every_line_everywhere_and_survives_a_missing_terminal(tmp_path):
    log, tty_a, tty_b = tmp_path / "headless.log", tmp_path / "tty1", tmp_path / "ttyS0"
    tty_b.write_text("earlier\r\n")
    gone = tmp_path / "no-such-dir" / "ttyS1"        # a console that cannot be opened
    text = "COLDCLONE-INVENTORY-JSON-BEGIN\n{\"disks\": []}\nlast line, no newline"
    r = sh('cc_fanout "$@"', "", text, str(log), str(tty_a), str(gone), str(tty_b))
    assert r.returncode == 0, r.stderr
    lines = ["COLDCLONE-INVENTORY-JSON-BEGIN", '{"disks": []}', "last line, no newline"]
    assert r.stdout.splitlines() == lines
    assert log.read_text().splitlines() == lines
    assert tty_a.read_bytes().decode() == "".join(f"{ln}\r\n" for ln in lines)
    # appended, never truncated: a terminal keeps what it showed before
    assert tty_b.read_bytes().decode() == "earlier\r\n" + "".join(f"{ln}\r\n" for ln in lines)
    assert r.stderr == ""


def test_ttys_are_tty1_and_each_serial_console_once():
    # cc_ttys only lists character devices; /dev/tty1 and /dev/ttyS0 exist on any Linux host
    r = sh("cc_ttys", "console=tty0 console=ttyS0,115200n8 console=ttyS0")
    want = [d for d in ("/dev/tty1", "/dev/ttyS0") if os.path.exists(d)]
    assert want, "this host has neither /dev/tty1 nor /dev/ttyS0: nothing to check"
    assert r.stdout.splitlines() == want


def test_on_done_is_written_for_headless_run_not_done_mid_output(tmp_path):
    # --live: the command goes to a file that headless-run runs once the consoles have every
    # line; without --live (a host run) nothing is written or done
    from agent.source.headless import apply_on_done

    cmdline = "boot=live console=tty0 console=ttyS0,115200 coldclone.on_done=shell"
    f = tmp_path / "on-done"
    apply_on_done("poweroff", True, cmdline, path=str(f))
    assert f.read_text().splitlines() == ["systemctl", "--no-block", "poweroff"]
    apply_on_done("shell", True, cmdline, path=str(f))
    assert f.read_text().splitlines() == ["systemctl", "--no-block", "start",
                                          "coldclone-shell@tty1.service", "coldclone-shell@ttyS0.service"]
    g = tmp_path / "not-live"
    apply_on_done("reboot", False, cmdline, path=str(g))
    assert not g.exists()
