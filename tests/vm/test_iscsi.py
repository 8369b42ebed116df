"""Software iSCSI with the source server's own identity, end to end in QEMU.

A real target (tgtd on the host's 127.0.0.1, the guest's 10.0.2.2) exports a LUN
whose ACL admits only the source server's initiator name, with CHAP. The guest's
local disk holds that server's OS root: /etc/iscsi/initiatorname.iscsi, an
iscsid.conf with the CHAP secret, a node record (open-iscsi's current layout)
and an ifcfg file. `coldclone headless` reads them read-only, logs in with that
identity through the live ISO's kernel initiator, and captures both the local
disk and the LUN; qemu-img compare proves both images. With the ACL bound to
another name, or a wrong secret, the run fails with the plain error for that
case and no capture is completed.

One boot serves the module: its headless run is the successful login and capture, and it
leaves a root shell (coldclone.on_done=shell) in which the failure cases run
`coldclone headless --cmdline ...` again, each against the array as that case needs it (the
ACL bound to another name, another CHAP secret, no portal): what a boot would show on its
console, at the cost of one run instead of one boot each. Mutual CHAP needs another source
disk (the node record carries the target's account), so it boots on its own.
"""

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import pytest

from agent.runcmd import run
from tests.testbed.loop import attached, partitions
from tests.testbed.procs import free_port
from tests.testbed.tgt import Chap, Tgtd, TgtTarget
from tests.vm import guest

from .conftest import LOG_DIR, TIMEOUT, _skip_unless_ready

pytestmark = [pytest.mark.vm, pytest.mark.root]

MiB = 1 << 20
SOURCE_NAME = "iqn.1994-05.com.redhat:db01-prod"
TARGET = "iqn.2026-11.test.coldclone:db01-data"
CHAP_USER = "db01chap"
CHAP_SECRET = "Sup3r-Secret-01"
# mutual CHAP: the account the target proves itself with (RFC 3720: differs from ours)
TARGET_USER = "db01array"
TARGET_SECRET = "Array-Secret-02"
LUN_SERIAL = "cc-lun1"


def write_source_os(root: str, portal_port: int, secret: str,
                    mutual: tuple[str, str] | None = None) -> None:
    """A RHEL 7 root as the source server left it: its iSCSI identity and network."""
    def put(rel: str, text: str, mode: int = 0o644) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    put("etc/redhat-release", "Red Hat Enterprise Linux Server release 7.9 (Maipo)\n")
    put("etc/os-release", 'NAME="Red Hat Enterprise Linux Server"\nVERSION_ID="7.9"\nID="rhel"\n'
        'PRETTY_NAME="Red Hat Enterprise Linux Server 7.9 (Maipo)"\n')
    put("etc/fstab", "UUID=0b0c5e1e-0000-4000-8000-000000000001 / ext4 defaults 1 1\n"
        "/dev/sdb1 /data ext4 _netdev 0 0\n")
    put("sbin/init", "#!/bin/sh\n", 0o755)
    put("etc/iscsi/initiatorname.iscsi", f"InitiatorName={SOURCE_NAME}\nInitiatorAlias=db01\n")
    back = ""
    if mutual:
        back = (f"node.session.auth.username_in = {mutual[0]}\n"
                f"node.session.auth.password_in = {mutual[1]}\n")
    put("etc/iscsi/iscsid.conf",
        "# Open-iSCSI configuration of db01\n"
        "node.startup = automatic\n"
        "node.session.auth.authmethod = CHAP\n"
        f"node.session.auth.username = {CHAP_USER}\n"
        f"node.session.auth.password = {secret}\n" + back +
        "node.conn[0].timeo.login_timeout = 15\n", 0o600)
    put(f"var/lib/iscsi/nodes/{TARGET}/{guest.HOST_FROM_GUEST},{portal_port},1/default",
        "# BEGIN RECORD 6.2.0.874-22\n"
        f"node.name = {TARGET}\nnode.tpgt = 1\nnode.startup = automatic\n"
        "iface.iscsi_ifacename = default\niface.net_ifacename = <empty>\n"
        "iface.hwaddress = <empty>\niface.transport_name = tcp\n"
        f"node.discovery_address = {guest.HOST_FROM_GUEST}\nnode.discovery_port = {portal_port}\n"
        "node.discovery_type = send_targets\n"
        "node.session.auth.authmethod = CHAP\n"
        f"node.session.auth.username = {CHAP_USER}\n"
        f"node.session.auth.password = {secret}\n" + back +
        f"node.conn[0].address = {guest.HOST_FROM_GUEST}\nnode.conn[0].port = {portal_port}\n"
        "node.conn[0].startup = manual\n# END RECORD\n", 0o600)
    put("etc/sysconfig/network-scripts/ifcfg-eth1",
        "# storage network\nDEVICE=eth1\nHWADDR=52:54:00:12:34:56\nBOOTPROTO=static\n"
        "IPADDR=192.168.10.21\nPREFIX=24\nONBOOT=yes\n")
    with open(os.path.join(root, "var/lib/payload.bin"), "wb") as f:
        f.write(os.urandom(6 * MiB))


def build_source_disk(path: str, portal_port: int, secret: str,
                      mutual: tuple[str, str] | None = None) -> guest.SourceDisk:
    """64 MiB, msdos table, one ext4 partition holding the OS root."""
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    run(["parted", "-s", path, "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "100%"])
    with attached(path) as dev:
        part = partitions(dev)[0]
        run(["mkfs.ext4", "-q", "-F", "-L", "db01-root", part])
        mnt = tempfile.mkdtemp(prefix="coldclone-iscsi-src-")
        run(["mount", part, mnt])
        try:
            write_source_os(mnt, portal_port, secret, mutual)
        finally:
            run(["umount", mnt])
            os.rmdir(mnt)
    return guest.SourceDisk(path, "cc-os", bus="virtio").seal()


@pytest.fixture(scope="module")
def server(vm_server):
    """The session's conversion server (sshd + receiver), once tgtd is known to be here."""
    _skip_unless_ready("kernel")
    if shutil.which("tgtd") is None:
        pytest.skip("tgt not installed (apt-get install tgt)")
    return vm_server


@pytest.fixture(scope="module")
def lun_image(tmp_path_factory):
    d = tmp_path_factory.mktemp("lun")
    return guest.pattern_disk(str(d / "lun1.img"), LUN_SERIAL, size_mb=32)


@contextlib.contextmanager
def array(lun_image, port: int, *, acl_name: str = SOURCE_NAME, secret: str = CHAP_SECRET,
          mutual: bool = False):
    """tgtd on the host's port ``port`` exporting the LUN as the storage array is configured."""
    tgt = Tgtd(port=port).start()
    try:
        tgt.add_target(TgtTarget(iqn=TARGET, luns=[lun_image.image], initiator_names=[acl_name],
                                 incoming=Chap(CHAP_USER, secret),
                                 outgoing=Chap(TARGET_USER, TARGET_SECRET) if mutual else None))
        yield tgt
    finally:
        tgt.stop()


def _words(server, rx: str, name: str, key_path: str, iscsi_ip: str, disks: str,
           on_done: str = "poweroff") -> str:
    return guest.headless_cmdline(server, rx, name, key_path,
                                  f"coldclone.iscsi_ip={iscsi_ip} coldclone.on_done={on_done} "
                                  # QEMU's pc machine has an empty floppy drive (fd0)
                                  f"coldclone.disks={disks}")


def _boot(server, tmp_path, name, *, lun_image, mutual: tuple[str, str] | None = None,
          iscsi_ip="dhcp", disks="vda,sda", shell=False, port: int | None = None):
    port = port or free_port()
    src = build_source_disk(str(tmp_path / f"{name}-os.img"), port, CHAP_SECRET, mutual)
    rx = server.new_dir(name)
    fw, key_path = guest.fwcfg_file("identity", server.identity)
    cmdline = _words(server, rx, name, key_path, iscsi_ip, disks, "shell" if shell else "poweroff")
    with array(lun_image, port, mutual=bool(mutual)) as tgt:
        t0 = time.monotonic()
        r = guest.boot_headless("kernel", cmdline, extra_args=fw + guest.disk_args([src]),
                                timeout=TIMEOUT, name=name, log_dir=LOG_DIR, shell=shell)
        r.wall = time.monotonic() - t0
        r.portal_port = port
        r.tgt_show = tgt.show()
        r.tgt_log = open(tgt.log_path, errors="replace").read()
        r.key_path = key_path
    return r, src, rx


@dataclass
class Session:
    """The module's boot: the successful run, then its root shell for the failure cases."""

    run: guest.Run
    src: guest.SourceDisk
    rx: str

    def failing_run(self, server, lun_image, name: str, array_up: bool = True,
                    **array_kw) -> tuple[guest.Console, str, float]:
        """`coldclone headless` again in the shell, against the array configured by array_kw
        (array_up False: nothing listens on the portal); (its console, its receiver dir,
        seconds)."""
        rx = server.new_dir(name)
        words = _words(server, rx, name, self.run.key_path, "dhcp", "vda,sda")
        t0 = time.monotonic()
        with (array(lun_image, self.run.portal_port, **array_kw) if array_up
              else contextlib.nullcontext()):
            rc, out = self.run.shell.headless(words)
        con = guest.parse_console(out)
        assert con.failed and con.exit_code == rc, (rc, out[-3000:])
        return con, rx, time.monotonic() - t0


@pytest.fixture(scope="module")
def session(server, lun_image, tmp_path_factory):
    r, src, rx = _boot(server, tmp_path_factory.mktemp("iscsi"), "iscsi-ok", lun_image=lun_image,
                       iscsi_ip="original", shell=True)
    try:
        yield Session(r, src, rx)
    finally:
        if r.shell is not None:
            r.shell.close()


def _no_complete_capture(rx: str) -> None:
    for d, _, files in os.walk(rx):
        if "manifest.json" in files:
            with open(os.path.join(d, "manifest.json")) as f:
                assert json.load(f).get("status") != "complete", f"{d} holds a complete capture"
        assert not [f for f in files if f.endswith(".qcow2")], f"{d}: {files}"


def test_login_with_the_source_identity_captures_disk_and_lun(session, lun_image):
    # iscsi_ip=original: the source's ifcfg-eth1 names the MAC QEMU gives the guest's NIC, so
    # its address is added there (next to the DHCP one that reaches 10.0.2.2) and removed
    # at logout.
    r, src, rx = session.run, session.src, session.rx
    con = r.console
    print(r.times(), f"wall {r.wall:.1f} s")
    assert con.ok, r.explain(120)
    text = "\n".join(con.lines)
    assert f"live initiator name set to {SOURCE_NAME}" in text, r.explain(120)
    assert "uses the source server's own address 192.168.10.21/24 on ens3" in text, r.explain(120)
    assert "the original server must be OFF" in text
    assert "'ip', 'addr', 'del', '192.168.10.21/24', 'dev', 'ens3'] -> exit 0" in con.text
    assert CHAP_SECRET not in con.text, "the CHAP secret reached the console"
    # discovery reports the LUN as an iSCSI disk: IQN, portal, LUN
    inv = con.inventory
    sessions = inv["iscsi_sessions"]
    assert len(sessions) == 1, sessions
    s = sessions[0]
    assert s["target"] == TARGET and s["initiator"] == SOURCE_NAME, s
    assert s["portal"] == f"{guest.HOST_FROM_GUEST}:{r.portal_port}", s
    lun_disk = next(d for d in inv["disks"] if d["transport"] == "iscsi")
    assert s["luns"] == {"1": lun_disk["name"]}, s
    assert lun_disk["size"] == 32 * MiB
    # both disks captured, byte for byte
    m = guest.manifest(rx, con.capture_id)
    os_disk = guest.inventory_disk_by_serial(inv, "cc-os")
    guest.qemu_img_compare(src.image, os.path.join(rx, con.capture_id,
                                                   guest.manifest_disk(m, os_disk["name"])["image"]))
    guest.qemu_img_compare(lun_image.image, os.path.join(
        rx, con.capture_id, guest.manifest_disk(m, lun_disk["name"])["image"]))
    # nothing of the source changed; the session was logged out after the capture
    assert guest.sha256_of(src.image) == src.sha256
    assert guest.sha256_of(lun_image.image) == lun_image.sha256
    assert f"'-p', '{guest.HOST_FROM_GUEST}:{r.portal_port}', '--logout'] -> exit 0" in con.text, \
        r.explain(80)
    # on_done=shell: the run left the root shell the failure cases below go on in
    assert r.shell is not None, f"no root shell after the run:\n{r.explain()}"


def test_mutual_chap_login_captures_the_lun(server, lun_image, tmp_path):
    """The source's iscsid.conf and node record also carry username_in/password_in: the array
    must prove itself back. tgtd has the matching outgoing account; only the LUN is captured."""
    r, src, rx = _boot(server, tmp_path, "iscsi-mutual", lun_image=lun_image,
                       mutual=(TARGET_USER, TARGET_SECRET), disks="sda")
    assert r.boot.exited and r.boot.exit_code == 0, f"the guest did not power off:\n{r.explain()}"
    con = r.console
    print(r.times(), f"wall {r.wall:.1f} s")
    assert con.ok, r.explain(120)
    assert f"mutual (target user {TARGET_USER} secret ****)" in con.text, r.explain(120)
    assert CHAP_SECRET not in con.text and TARGET_SECRET not in con.text
    # the live initiator asks the array to prove itself: open-iscsi got the target's account
    assert f"'node.session.auth.username_in', '-v', '{TARGET_USER}'] -> exit 0" in con.text
    assert "'node.session.auth.password_in', '-v', '****'] -> exit 0" in con.text
    inv = con.inventory
    lun_disk = next(d for d in inv["disks"] if d["transport"] == "iscsi")
    m = guest.manifest(rx, con.capture_id)
    assert [d["name"] for d in m["disks"]] == [lun_disk["name"]], m["disks"]
    guest.qemu_img_compare(lun_image.image, os.path.join(
        rx, con.capture_id, guest.manifest_disk(m, lun_disk["name"])["image"]))
    assert guest.sha256_of(lun_image.image) == lun_image.sha256
    assert guest.sha256_of(src.image) == src.sha256


def test_acl_bound_to_another_name_fails_plainly(session, server, lun_image):
    con, rx, secs = session.failing_run(server, lun_image, "iscsi-acl",
                                        acl_name="iqn.1994-05.com.redhat:some-other-host")
    print(f"\n  in the session's shell: {secs:.1f} s")
    assert con.exit_code == 4, con.tail(80)
    assert "refuses initiator " + SOURCE_NAME in con.message, con.tail(80)
    assert "access control list" in con.message
    assert CHAP_SECRET not in con.text
    _no_complete_capture(rx)
    assert guest.sha256_of(session.src.image) == session.src.sha256


def test_wrong_chap_secret_fails_plainly(session, server, lun_image):
    """The array expects another secret than the one the source server's records hold."""
    con, rx, secs = session.failing_run(server, lun_image, "iscsi-chap", secret="Not-The-Secret-7")
    print(f"\n  in the session's shell: {secs:.1f} s")
    assert con.exit_code == 4, con.tail(80)
    assert "CHAP authentication failed" in con.message, con.tail(80)
    assert TARGET in con.message and CHAP_USER in con.message
    assert "Not-The-Secret-7" not in con.text and CHAP_SECRET not in con.text
    _no_complete_capture(rx)
    assert guest.sha256_of(session.src.image) == session.src.sha256


def test_unreachable_portal_fails_plainly(session, server, lun_image):
    """Nothing listens where the source server's node records point."""
    con, rx, secs = session.failing_run(server, lun_image, "iscsi-down", array_up=False)
    print(f"\n  in the session's shell: {secs:.1f} s")
    assert con.exit_code == 4, con.tail(80)
    assert f"{guest.HOST_FROM_GUEST}:{session.run.portal_port} is unreachable" in con.message, con.tail(80)
    assert "Check the cabling" in con.message
    _no_complete_capture(rx)
