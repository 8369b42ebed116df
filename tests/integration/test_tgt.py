"""The tgtd testbed really runs: a target with a file-backed LUN, an ACL bound to
one initiator name and incoming CHAP. No kernel initiator is needed: the
security phase of the iSCSI login is spoken by tests.testbed.tgt.login_probe,
which shows the login status tgtd answers for each failure the agent classifies.
"""

import shutil
import socket

import pytest

from tests.testbed.tgt import Chap, Tgtd, TgtTarget, login_probe

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("tgtd") is None, reason="tgt not installed "
                                 "(apt-get install tgt)")]

SOURCE = "iqn.1994-05.com.redhat:db01-prod"
TARGET = "iqn.2026-11.test.coldclone:db01-data"
CHAP = Chap("db01chap", "Sup3r-Secret-01")


@pytest.fixture
def tgt(tmp_path):
    lun = tmp_path / "lun1.img"
    with open(lun, "wb") as f:
        f.truncate(16 << 20)
    t = Tgtd().start()
    try:
        t.add_target(TgtTarget(iqn=TARGET, luns=[str(lun)], initiator_names=[SOURCE],
                               incoming=CHAP))
        yield t
    finally:
        t.stop()


def test_target_acl_and_chap_configured(tgt, tmp_path):
    shown = tgt.show()
    assert f"Target 1: {TARGET}" in shown
    assert f"Backing store path: {tmp_path / 'lun1.img'}" in shown
    assert "Size: 17 MB" in shown            # 16 MiB, as tgtadm rounds it
    acl = shown.split("ACL information:")[1].split()
    assert acl == [SOURCE]                   # the name only: no address ACL opens it wider
    assert "db01chap" in shown.split("Account information:")[1]
    assert CHAP.secret not in shown


def test_login_status_per_case(tgt):
    """What tgtd answers: the facts the agent's error classification rests on."""
    ok = login_probe("127.0.0.1", tgt.port, SOURCE, TARGET, CHAP)
    assert ok.status == "0x0000"
    wrong_secret = login_probe("127.0.0.1", tgt.port, SOURCE, TARGET,
                               Chap(CHAP.user, "Wrong-Secret-99"))
    assert wrong_secret.status == "0x0201"   # authentication failure
    no_chap = login_probe("127.0.0.1", tgt.port, SOURCE, TARGET, None)
    assert no_chap.status == "0x0201" and no_chap.keys.get("AuthMethod") == "Reject"
    other_name = login_probe("127.0.0.1", tgt.port, "iqn.1993-08.org.debian:01:livecd", TARGET, CHAP)
    assert other_name.status == "0x0203"     # ACL refusal: "target not found", not 0x0202
    missing = login_probe("127.0.0.1", tgt.port, SOURCE, TARGET + "-nope", CHAP)
    assert missing.status == "0x0203"


def test_stop_frees_the_portal(tmp_path):
    t = Tgtd().start()
    port = t.port
    t.add_target(TgtTarget(iqn=TARGET, luns=[]))
    t.stop()
    assert t.proc.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_mutual_chap_account(tmp_path):
    """The target's own (outgoing) account, for sources configured with mutual CHAP."""
    with Tgtd() as t:
        t.add_target(TgtTarget(iqn=TARGET, luns=[], initiator_names=[SOURCE], incoming=CHAP,
                               outgoing=Chap("netapp-tgt", "Tgt-Secret-9876")))
        accounts = t.show().split("Account information:")[1].split("ACL information:")[0]
        assert "db01chap" in accounts and "netapp-tgt (outgoing)" in accounts
        assert "Tgt-Secret-9876" not in t.show()
        assert login_probe("127.0.0.1", t.port, SOURCE, TARGET, CHAP).status == "0x0000"
