"""Reading a source OS's software-iSCSI identity: initiatorname, iscsid.conf,
node records in both open-iscsi layouts, ifcfg / Debian interfaces / NM keyfiles."""

import os
import shutil

import pytest

from agent import records
from agent.guestos import iscsi as ins_iscsi
from agent.guestos import network
from agent.source.iscsi.auto import find_identities
from agent.source.iscsi.model import IscsiTarget, SourceIscsiConfig
from agent.source.iscsi.sourceconfig import read_source_config

FIX = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "iscsi")
SECRETS = ("Sup3r-Secret-01", "Tgt-Secret-9876", "Disc0very-Pass", "eql-chap-pw-42")


def test_initiatorname_with_odd_spacing_and_alias():
    ini = ins_iscsi.parse_initiatorname(
        "## comment InitiatorName=iqn.bad\n\n  InitiatorName =iqn.1994-05.com.redhat:db01 \n"
        "   InitiatorAlias =  db01\n")
    assert ini.name == "iqn.1994-05.com.redhat:db01"
    assert ini.alias == "db01"


def test_rhel7_new_layout_chap_and_mutual_chap():
    cfg = read_source_config(os.path.join(FIX, "rhel7"))
    assert cfg.initiator_name == "iqn.1994-05.com.redhat:db01-prod"
    assert cfg.alias == "db01"
    assert cfg.os_name.startswith("Red Hat Enterprise Linux Server release 7.9")
    # iscsid.conf defaults: CHAP with mutual CHAP, and discovery CHAP
    assert cfg.chap.username == "db01chap" and cfg.chap.password.reveal() == "Sup3r-Secret-01"
    assert cfg.chap.mutual and cfg.chap.username_in == "netapp-tgt"
    assert cfg.chap.password_in.reveal() == "Tgt-Secret-9876"
    assert cfg.discovery_chap.username == "db01disc"
    assert cfg.discovery_chap.password.reveal() == "Disc0very-Pass"
    # nodes/<iqn>/<addr,port,tpgt>/default
    [t] = cfg.targets
    assert t.iqn == "iqn.1992-08.com.netapp:sn.4082367740"
    assert t.portal == "192.168.10.20:3260" and t.tpgt == 1000
    assert t.startup == "automatic" and t.iface == "default"
    assert t.net_ifacename is None and t.hwaddress is None   # <empty>
    assert t.source.endswith("192.168.10.20,3260,1000/default")
    assert cfg.chap_for(t).username == "db01chap"
    assert cfg.discovery_portals == ["192.168.10.20:3260"]
    # the storage NIC: on the portal's subnet; the .bak copy is ignored (ifup ignores it too)
    i = cfg.interface
    assert (i.name, i.mac, i.address, i.prefix, i.cidr) == (
        "eth1", "00:1a:4b:dc:82:12", "192.168.10.21", 24, "192.168.10.21/24")
    assert i.source == "/etc/sysconfig/network-scripts/ifcfg-eth1"


def test_debian_old_layout_per_node_chap_and_interfaces():
    cfg = read_source_config(os.path.join(FIX, "debian6"))
    assert cfg.initiator_name == "iqn.1993-08.org.debian:01:e3b9a1c0d2f4"
    assert cfg.chap is None            # only commented CHAP lines in iscsid.conf
    [t] = cfg.targets                  # nodes/<iqn>/<addr,port> is the record file itself
    assert t.iqn.endswith("16e0002fd0a46f3d-vol01")
    assert t.portal == "10.20.0.10:3260" and t.tpgt == 1
    assert t.iface == "default" and t.hwaddress == "00:25:90:aa:bb:02"
    chap = cfg.chap_for(t)
    assert chap.username == "fileserver" and chap.password.reveal() == "eql-chap-pw-42"
    assert not chap.mutual
    i = cfg.interface                  # bound by MAC in the node record
    assert (i.name, i.address, i.prefix, i.mac) == ("eth2", "10.20.0.31", 24, "00:25:90:aa:bb:02")


def test_networkmanager_keyfiles_and_discovery_only():
    cfg = read_source_config(os.path.join(FIX, "nm-only"))
    assert cfg.targets == []
    assert cfg.discovery_portals == ["172.16.5.1:3260"]
    assert cfg.discovery_chap is None or not cfg.discovery_chap.enabled
    i = cfg.interface
    assert (i.name, i.mac, i.cidr, i.gateway) == (
        "ens224", "00:50:56:9a:11:22", "172.16.5.44/24", "172.16.5.254")
    conns = {c.id: (c, a, g) for c, a, g in network.read_nm_ipv4(os.path.join(FIX, "nm-only"))}
    # NetworkManager 0.9 spelling: addresses1=ADDR;PREFIX;GW; and a decimal MAC
    c, addresses, gateway = conns["mgmt"]
    assert addresses == ["10.9.9.9/16"] and gateway == "10.9.0.1"
    assert c.mac_address == "00:50:56:9a:11:01"
    assert network.parse_nm_ipv4("[ipv4]\nmethod=manual\naddress1=10.1.2.3/24\n"
                                 "address2=10.1.3.3/24,10.1.3.1\ngateway=10.1.2.1\n") == (
        ["10.1.2.3/24", "10.1.3.3/24"], "10.1.2.1")


def test_both_layouts_in_one_tree_are_merged(tmp_path):
    root = tmp_path / "os"
    shutil.copytree(os.path.join(FIX, "rhel7"), root)
    # RHEL 5 kept the database in /etc/iscsi: the same node there is one target, not two
    src = root / "var/lib/iscsi/nodes"
    shutil.copytree(src, root / "etc/iscsi/nodes")
    old = root / "etc/iscsi/nodes/iqn.2001-05.com.example:old/10.0.0.9,3260"
    old.parent.mkdir(parents=True)
    old.write_text("node.name = iqn.2001-05.com.example:old\nnode.conn[0].address = 10.0.0.9\n"
                   "node.conn[0].port = 3260\nnode.startup = manual\n")
    cfg = read_source_config(str(root))
    assert sorted((t.iqn, t.portal, t.tpgt) for t in cfg.targets) == [
        ("iqn.1992-08.com.netapp:sn.4082367740", "192.168.10.20:3260", 1000),
        ("iqn.2001-05.com.example:old", "10.0.0.9:3260", None)]


def test_ipv6_portal_directory_name():
    assert ins_iscsi.split_portal_name("[fe80::1],3260,1") == ("fe80::1", 3260, 1)
    assert ins_iscsi.split_portal_name("fe80::1,3260") == ("fe80::1", 3260, None)
    assert IscsiTarget(iqn="x", portal="[fe80::1]:3261").host == "fe80::1"
    assert IscsiTarget(iqn="x", portal="[fe80::1]:3261").port == 3261


def test_no_initiator_name_means_no_identity(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    assert read_source_config(str(tmp_path)) is None
    assert find_identities(None, roots=[str(tmp_path)]) == []


def test_several_roots():
    ids = find_identities(None, roots=[os.path.join(FIX, r) for r in ("rhel7", "debian6", "nm-only")])
    assert [c.initiator_name for c in ids] == [
        "iqn.1994-05.com.redhat:db01-prod", "iqn.1993-08.org.debian:01:e3b9a1c0d2f4",
        "iqn.1994-05.com.redhat:web07"]


@pytest.mark.parametrize("root", ["rhel7", "debian6"])
def test_secrets_never_shown(root):
    cfg = read_source_config(os.path.join(FIX, root))
    shown = "\n".join([repr(cfg), str(cfg), records.dumps(cfg), *cfg.describe()])
    for s in SECRETS:
        assert s not in shown
    assert "****" in shown


def test_source_tree_untouched():
    """Reading is read-only: nothing in the fixture trees changes (mtime and bytes)."""
    def snap():
        out = {}
        for d, _, fs in os.walk(FIX):
            for f in fs:
                p = os.path.join(d, f)
                out[p] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
        return out
    before = snap()
    for r in ("rhel7", "debian6", "nm-only"):
        read_source_config(os.path.join(FIX, r))
    assert snap() == before


def test_portals_order_and_dedup():
    cfg = SourceIscsiConfig(root="/x", initiator_name="iqn.2000-01.a:b",
                            discovery_portals=["10.0.0.1:3260"],
                            targets=[IscsiTarget("iqn.t:1", "10.0.0.1:3260"),
                                     IscsiTarget("iqn.t:2", "10.0.0.2:3260")])
    assert cfg.portals() == ["10.0.0.1:3260", "10.0.0.2:3260"]


def test_one_reading_of_a_portal():
    from agent.source.iscsi.model import IscsiTarget, make_portal, split_portal

    cases = {
        "10.0.0.5": ("10.0.0.5", None),
        "10.0.0.5:3261": ("10.0.0.5", 3261),
        "array.example:3260": ("array.example", 3260),
        "[fe80::1]:3261": ("fe80::1", 3261),
        "[fe80::1]": ("fe80::1", None),
        "fe80::1": ("fe80::1", None),          # bare IPv6: every ':' belongs to the address
        " 10.0.0.5:3260 ": ("10.0.0.5", 3260),
    }
    for text, want in cases.items():
        assert split_portal(text) == want, text
    assert make_portal(*split_portal("[fe80::1]:3261")) == "[fe80::1]:3261"
    assert make_portal(*split_portal("fe80::1")) == "[fe80::1]:3260"
    t = IscsiTarget(iqn="iqn.2026-11.test:t", portal="[fe80::1]:3261")
    assert (t.host, t.port) == ("fe80::1", 3261)
    with pytest.raises(ValueError, match="port must be a number"):
        split_portal("10.0.0.5:iscsi")
