"""coldclone.ip= / the TUI's network screen: the spec parser and the NIC choice."""

import pytest

from agent.errors import UsageError
from agent.source.discover.model import Nic
from agent.source.netsetup import IpSpec, choose_iface, list_nics, parse_ip_spec, write_resolv_conf


@pytest.mark.parametrize("text,want", [
    ("dhcp", IpSpec(dhcp=True)),
    ("DHCP", IpSpec(dhcp=True)),
    ("eth1:dhcp", IpSpec(dhcp=True, iface="eth1")),
    ("192.168.10.21/24", IpSpec(False, None, "192.168.10.21/24")),
    ("eno1:192.168.10.21/24,gw=192.168.10.1", IpSpec(False, "eno1", "192.168.10.21/24", "192.168.10.1")),
    ("ens3f0:10.1.2.3/16,gw=10.1.0.1,dns=10.1.0.2,dns=10.1.0.3",
     IpSpec(False, "ens3f0", "10.1.2.3/16", "10.1.0.1", ["10.1.0.2", "10.1.0.3"])),
    (" 10.0.0.5/8 , dns=1.1.1.1 ", IpSpec(False, None, "10.0.0.5/8", None, ["1.1.1.1"])),
    ("2001:db8::5/64", IpSpec(False, None, "2001:db8::5/64")),
    ("eth0:2001:db8::5/64,gw=2001:db8::1", IpSpec(False, "eth0", "2001:db8::5/64", "2001:db8::1")),
    ("bond0.100:172.16.0.9/24", IpSpec(False, "bond0.100", "172.16.0.9/24")),
])
def test_parse(text, want):
    assert parse_ip_spec(text) == want


def test_round_trip():
    for text in ("dhcp", "eth1:dhcp", "eno1:192.168.10.21/24,gw=192.168.10.1,dns=192.168.10.2"):
        assert str(parse_ip_spec(text)) == text


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    ("192.168.10.21", "no prefix length"),
    ("192.168.10.21/32", "leaves no network"),
    ("300.1.1.1/24", "not an IPv4/IPv6 address"),
    ("eth0:192.168.1.5/24,gw=10.0.0.1", "not inside 192.168.1.0/24"),
    ("192.168.1.5/24,gw=192.168.1.1,gw=192.168.1.2", "given twice"),
    ("192.168.1.5/24,mtu=9000", "unknown option 'mtu'"),
    ("192.168.1.5/24,dns", "gw=ADDRESS or dns=ADDRESS"),
    ("192.168.1.5/24,dns=nameserver", "is not an IP address"),
    ("bad name:dhcp", "not an interface name"),
])
def test_errors_name_the_problem_and_the_grammar(text, words):
    with pytest.raises(UsageError) as e:
        parse_ip_spec(text)
    msg = str(e.value)
    assert words in msg
    assert "[IFACE:]ADDRESS/PREFIX" in msg   # and say what is accepted


NICS = [Nic("eno1", "aa:bb:cc:00:00:01", operstate="down", carrier=False),
        Nic("eno2", "aa:bb:cc:00:00:02", speed_mbps=1000, operstate="up", carrier=True)]


def test_choose_iface():
    assert choose_iface(IpSpec(dhcp=True), NICS) == "eno2"          # the one with a link
    assert choose_iface(IpSpec(dhcp=True, iface="eno1"), NICS) == "eno1"
    with pytest.raises(UsageError, match="eth9 does not exist here .*eno1, eno2"):
        choose_iface(IpSpec(dhcp=True, iface="eth9"), NICS)
    with pytest.raises(UsageError, match="no network interface"):
        choose_iface(IpSpec(dhcp=True), [])


def test_list_nics_from_sysfs_skips_virtual_interfaces(tmp_path):
    for name, dev, carrier, speed in (("lo", False, "1", None), ("eth0", True, "1", "10000"),
                                      ("br0", False, "1", None), ("eth1", True, "0", "-1")):
        d = tmp_path / name
        d.mkdir()
        (d / "address").write_text(f"52:54:00:00:00:{len(name):02x}\n")
        (d / "operstate").write_text("up\n")
        (d / "carrier").write_text(carrier + "\n")
        if speed:
            (d / "speed").write_text(speed + "\n")
        if dev:
            (d / "device").mkdir()
    nics = list_nics(sys_net=str(tmp_path), with_addresses=False)
    assert [(n.name, n.speed_mbps, n.carrier) for n in nics] == [("eth0", 10000, True), ("eth1", None, False)]


def test_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("nameserver 127.0.0.53\n")
    write_resolv_conf(["10.0.0.2", "10.0.0.3"], str(p))
    assert p.read_text().splitlines()[1:] == ["nameserver 10.0.0.2", "nameserver 10.0.0.3"]
