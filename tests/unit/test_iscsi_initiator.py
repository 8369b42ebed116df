"""The live-system side of the iSCSI login that runs without a kernel initiator:
classifying iscsiadm's failures, parsing SendTargets answers, the sysfs walk
from a session to its LUN block devices, the live initiator name file, and
that CHAP secrets never reach a log line or an error."""

import logging
import os

import pytest

from agent.choices import IscsiMode
from agent.source.discover.model import Inventory
from agent.errors import CommandError, UsageError
from agent.guestos.model import Secret
from agent.source.iscsi import errors as E
from agent.source.iscsi import initiator
from agent.source.iscsi.auto import IscsiAttachment, _to_login, attach, auto_attach, manual_identity
from agent.source.iscsi.model import Chap, IscsiTarget, SourceIscsiConfig
from agent.runcmd import run

# What the real tools said in the live ISO (open-iscsi 2.1.8 against tgtd 1.0.85),
# copied from the VM test's serial logs (tests/vm/test_iscsi.py): a wrong CHAP secret
# gives exit 24, an ACL refusal exit 21 at discovery and exit 19 at login, a closed
# portal exit 11 at discovery. IDLOG_*: iscsid's journal lines for login statuses
# 0x0201 and 0x0203 as the VM logged them; 0x0202 in open-iscsi's wording.
ISCSIADM_24 = ("iscsiadm: Could not login to [iface: default, target: iqn.2026-11.t:d, "
               "portal: 10.0.2.2,3260].\niscsiadm: initiator reported error (24 - iSCSI login "
               "failed due to authorization failure)\niscsiadm: Could not log into all portals")
ISCSIADM_19 = ("iscsiadm: Could not login to [iface: default, target: iqn.2026-11.t:d, "
               "portal: 10.0.2.2,3260].\niscsiadm: initiator reported error (19 - encountered "
               "non-retryable iSCSI login failure)\niscsiadm: Could not log into all portals")
ISCSIADM_NOPORTALS = "iscsiadm: No portals found"
ISCSIADM_REFUSED = ("iscsiadm: cannot make connection to 10.0.2.2: Connection refused\n"
                    "iscsiadm: cannot make connection to 10.0.2.2: Connection refused\n"
                    "iscsiadm: connection login retries (reopen_max) 1 exceeded\n"
                    "iscsiadm: Could not perform SendTargets discovery: iSCSI PDU timed out")
IDLOG_AUTH = ("Login failed to authenticate with target iqn.2026-11.t:d\n"
              "session 1 login rejected: Initiator failed authentication with target")
IDLOG_NOTFOUND = "connection1:0 login rejected: initiator error - target not found (02/03)"
IDLOG_FORBIDDEN = "conn 0 login rejected: initiator failed authorization with target"


@pytest.mark.parametrize("rc,out,idlog,listed,want", [
    (24, ISCSIADM_24, IDLOG_AUTH, True, "auth"),
    (24, ISCSIADM_24, "", True, "auth"),              # no journal: discovery listed us
    (24, ISCSIADM_24, "", False, "acl"),              # not listed: the name is refused
    (24, ISCSIADM_24, IDLOG_FORBIDDEN, True, "acl"),  # 0x0202 forbidden
    (19, ISCSIADM_19, IDLOG_NOTFOUND, None, "acl"),   # tgtd's ACL refusal: 0x0203
    (19, ISCSIADM_19, "", False, "acl"),
    (19, ISCSIADM_19, "", True, "acl"),
    (4, "iscsiadm: initiator reported error (4 - encountered connection failure)", "", None,
     "unreachable"),
    (8, "iscsiadm: initiator reported error (8 - connection timed out)", "", None, "unreachable"),
    (1, "something else entirely", "", None, "other"),
])
def test_classify_login(rc, out, idlog, listed, want):
    assert initiator.classify(rc, out, idlog, listed=listed) == want


def test_classify_discovery():
    assert initiator.classify(11, ISCSIADM_REFUSED, discovery=True) == "unreachable"
    assert initiator.classify(4, "iscsiadm: cannot make connection to 10.0.2.2: No route to host",
                              discovery=True) == "unreachable"
    assert initiator.classify(21, ISCSIADM_NOPORTALS, discovery=True) == "empty"
    assert initiator.classify(24, "iscsiadm: Login failed to authenticate with target",
                              discovery=True) == "auth"


def test_parse_discovery():
    out = ("10.0.2.2:3260,1 iqn.2026-11.test:a\n"
           "[fe80::5054:ff:fe12:3456]:3260,2 iqn.2026-11.test:b\n"
           "iscsiadm: some warning\n")
    assert initiator.parse_discovery(out) == [
        ("iqn.2026-11.test:a", "10.0.2.2:3260", 1),
        ("iqn.2026-11.test:b", "[fe80::5054:ff:fe12:3456]:3260", 2)]


def test_errors_name_target_portal_and_what_to_check():
    a = E.auth_error("iqn.t:d", "10.0.2.2:3260", "iqn.1994-05.com.redhat:db01", "db01chap",
                     mutual=True)
    assert isinstance(a, E.IscsiAuthError) and a.exit_code == 4
    for word in ("iqn.t:d", "10.0.2.2:3260", "CHAP", "db01chap", "mutual"):
        assert word in str(a)
    b = E.acl_error("iqn.t:d", "10.0.2.2:3260", "iqn.1994-05.com.redhat:db01")
    assert isinstance(b, E.IscsiAclError)
    assert "refuses initiator iqn.1994-05.com.redhat:db01" in str(b) and "10.0.2.2:3260" in str(b)
    c = E.unreachable_error("iqn.t:d", "10.0.2.2:3260")
    assert isinstance(c, E.IscsiUnreachableError) and "unreachable" in str(c)
    assert len({type(a), type(b), type(c)}) == 3


def test_secrets_masked_in_argv_logs_and_errors(caplog):
    chap = Chap(username="u", password=Secret("Top-Secret-123"), username_in="t",
                password_in=Secret("Back-Secret-456"), authmethod="CHAP")
    settings = initiator._auth_settings("node.session.auth", chap)
    assert ("node.session.auth.password", "Top-Secret-123") in settings
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CommandError) as ei:
        run(["sh", "-c", 'echo "bad value $1" >&2; exit 24', "sh", "Top-Secret-123"],
            secrets=initiator._secrets(chap))
    shown = str(ei.value) + caplog.text
    assert "Top-Secret-123" not in shown and "****" in shown


def test_no_chap_sets_authmethod_none():
    assert initiator._auth_settings("node.session.auth", None) == [
        ("node.session.auth.authmethod", "None")]


def test_write_initiator_name(tmp_path):
    p = tmp_path / "etc/iscsi/initiatorname.iscsi"
    initiator.write_initiator_name("iqn.1994-05.com.redhat:db01", "db01", path=str(p))
    text = p.read_text()
    assert "InitiatorName=iqn.1994-05.com.redhat:db01\n" in text
    assert "InitiatorAlias=db01\n" in text
    assert "GenerateName" not in text        # Debian's iscsid would replace the name
    with pytest.raises(UsageError):
        initiator.write_initiator_name("db01 oops", path=str(p))


def _fake_sysfs(root, sid, host, iqn, addr, port, luns):
    """The sysfs shape of an iscsi_tcp session (recorded from the live ISO's kernel)."""
    sess = root / f"devices/platform/host{host}/session{sid}"
    (sess / f"iscsi_session/session{sid}").mkdir(parents=True)
    cls = root / "class/iscsi_session"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / f"session{sid}").mkdir()
    (cls / f"session{sid}/targetname").write_text(iqn + "\n")
    (cls / f"session{sid}/device").symlink_to(sess)
    conn = root / "class/iscsi_connection" / f"connection{sid}:0"
    conn.mkdir(parents=True)
    (conn / "persistent_address").write_text(addr + "\n")
    (conn / "persistent_port").write_text(f"{port}\n")
    tdir = sess / f"target{host}:0:0"
    for lun, name in luns:
        d = tdir / f"{host}:0:0:{lun}"
        d.mkdir(parents=True)
        if name:
            (d / "block" / name).mkdir(parents=True)
    return sess


def test_sysfs_session_to_luns(tmp_path):
    _fake_sysfs(tmp_path, 1, 2, "iqn.t:other", "10.0.0.9", 3260, [(1, "sdb")])
    sess = _fake_sysfs(tmp_path, 2, 3, "iqn.t:d", "10.0.2.2", 3260,
                       [(0, None), (1, "sdc"), (2, "sdd")])   # LUN 0: tgtd's controller
    t = IscsiTarget(iqn="iqn.t:d", portal="10.0.2.2:3260")
    assert initiator.find_session(t.iqn, t.portal, str(tmp_path)) == os.path.realpath(sess)
    assert initiator.session_luns(str(sess)) == [(1, "sdc"), (2, "sdd")]
    assert initiator.wait_luns(t, timeout=5, settle=0.3, sysfs=str(tmp_path)) == [
        (1, "sdc"), (2, "sdd")]
    with pytest.raises(E.IscsiNoLunsError) as ei:
        initiator.wait_luns(IscsiTarget("iqn.t:none", "10.0.2.2:3260"), timeout=0.5,
                            sysfs=str(tmp_path))
    assert "iqn.t:none" in str(ei.value) and "LUN masking" in str(ei.value)


def test_which_targets_to_log_in():
    auto_t = IscsiTarget("iqn.t:a", "10.0.0.1:3260", startup="automatic")
    manual = IscsiTarget("iqn.t:m", "10.0.0.1:3260", startup="manual")
    cfg = SourceIscsiConfig(root="/x", initiator_name="iqn.2000-01.a:b", targets=[auto_t, manual])
    assert _to_login(cfg, []) == [auto_t]
    cfg.targets = [manual]
    assert _to_login(cfg, []) == [manual]
    cfg.targets = []
    got = _to_login(cfg, [("iqn.t:d", "10.0.0.1:3260", 1), ("iqn.t:d", "10.0.0.2:3260", 1)])
    assert [(t.iqn, t.portal) for t in got] == [("iqn.t:d", "10.0.0.1:3260")]


def test_chap_for_prefers_the_node_record():
    node = Chap(username="n", password=Secret("x" * 12), authmethod="CHAP")
    glob = Chap(username="g", password=Secret("y" * 12), authmethod="CHAP")
    cfg = SourceIscsiConfig(root="/x", initiator_name="iqn.2000-01.a:b", chap=glob)
    assert cfg.chap_for(IscsiTarget("iqn.t:a", "h:1", auth=node)).username == "n"
    assert cfg.chap_for(IscsiTarget("iqn.t:a", "h:1")).username == "g"
    none = Chap(authmethod="None")
    assert cfg.chap_for(IscsiTarget("iqn.t:a", "h:1", auth=none)) is None


def test_auto_attach_off_and_nothing_found():
    said = []
    assert auto_attach(IscsiMode.OFF, "dhcp", None, said.append) is None
    assert "off" in said[0]

    said.clear()
    assert auto_attach(IscsiMode.AUTO, "dhcp", Inventory(), said.append) is None
    assert "no source OS with an iSCSI initiator name" in said[0]


def test_attach_refuses_the_live_root():
    with pytest.raises(ValueError):
        attach(SourceIscsiConfig(root="/", initiator_name="iqn.2000-01.a:b"), say=lambda s: None)


def test_attachment_logout_reaches_every_target_once(monkeypatch):
    # iscsiadm needs the kernel initiator, which this host lacks: record the calls instead
    calls = []

    def logout(t):
        calls.append(("logout", t.iqn))
        if t.iqn.endswith(":broken"):
            raise CommandError(["iscsiadm"], 21, "no session", "")

    monkeypatch.setattr(initiator, "logout", logout)
    monkeypatch.setattr(initiator, "forget_discovery", lambda p: calls.append(("forget", p)))

    class Net:
        def undo(self):
            calls.append(("undo", "net"))

    targets = [IscsiTarget(iqn="iqn.2000-01.a:broken", portal="10.0.0.9:3260"),
               IscsiTarget(iqn="iqn.2000-01.a:data", portal="10.0.0.9:3260")]
    att = IscsiAttachment(identity=SourceIscsiConfig(root="/x", initiator_name="iqn.2000-01.a:b"),
                          targets=targets, portals=["10.0.0.9:3260"], net=Net())
    said = []
    att.logout(said.append)
    att.logout(said.append)          # the TUI's exit and headless's finally may both call it
    # a failed logout does not stop the others; discovery records and the borrowed address go too
    assert calls == [("logout", "iqn.2000-01.a:broken"), ("logout", "iqn.2000-01.a:data"),
                     ("forget", "10.0.0.9:3260"), ("undo", "net")]
    assert said == ["iSCSI: logged out of iqn.2000-01.a:data at 10.0.0.9:3260"]


def test_manual_identity_typed_by_the_operator():
    cfg = manual_identity("iqn.1994-05.com.redhat:db01", "192.168.10.20", "iqn.t:d",
                          chap_user="u", chap_secret="Typed-Secret-1")
    [t] = cfg.targets
    assert (t.iqn, t.portal) == ("iqn.t:d", "192.168.10.20:3260")
    assert cfg.chap_for(t).password.reveal() == "Typed-Secret-1"
    assert "Typed-Secret-1" not in repr(cfg) + "\n".join(cfg.describe())
    more = manual_identity("iqn.1994-05.com.redhat:db01", "[fe80::1]:3261", base=cfg)
    assert more is cfg and cfg.discovery_portals == ["[fe80::1]:3261"]


def test_live_identity_is_the_live_systems_own_name(tmp_path):
    from agent.source.iscsi.auto import live_identity

    with pytest.raises(UsageError, match="no initiator name in .*initiatorname.iscsi"):
        live_identity(str(tmp_path))
    (tmp_path / "etc/iscsi").mkdir(parents=True)
    (tmp_path / "etc/iscsi/initiatorname.iscsi").write_text(
        "## generated by open-iscsi\nInitiatorName=iqn.1993-08.org.debian:01:5e1f0a2b3c4d\n")
    ident = live_identity(str(tmp_path))
    assert ident.initiator_name == "iqn.1993-08.org.debian:01:5e1f0a2b3c4d"
    assert ident.targets == [] and ident.root != "/"      # attach() refuses a "/" root
