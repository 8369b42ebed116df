"""netsetup.apply on a real interface: a veth pair with one end in a network namespace.

The live system's static set-up (coldclone.ip= / the TUI's network screen) must give the NIC
the address and the default route, so the conversion server becomes reachable.
"""

import os
import socket
import subprocess
import sys

import pytest

from agent.runcmd import run
from tests.testbed.netns import VethNamespace

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def netns():
    # the inside end stays down and bare: netsetup is what configures it
    with VethNamespace(f"ccnet{os.getpid()}", f"cch{os.getpid()}"[:15], "ccpeer0", "10.77.0.1/24") as v:
        yield v.ns, v.ns_if


def in_ns(ns, code):
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_static_address_gateway_and_dns(netns, tmp_path):
    ns, peer = netns
    resolv = tmp_path / "resolv.conf"
    r = in_ns(ns, "from agent.source import netsetup\n"
                  f"spec = netsetup.parse_ip_spec('{peer}:10.77.0.2/24,gw=10.77.0.1,dns=10.77.0.53')\n"
                  f"print('\\n'.join(netsetup.apply(spec, resolv_conf='{resolv}').lines))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{peer}: link up", f"{peer}: address 10.77.0.2/24",
                                     "default route via 10.77.0.1", f"DNS 10.77.0.53 ({resolv})"]
    addrs = run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr", "show", "dev", peer]).stdout
    assert "inet 10.77.0.2/24" in addrs
    route = run(["ip", "netns", "exec", ns, "ip", "route", "show", "default"]).stdout
    assert route.startswith(f"default via 10.77.0.1 dev {peer}")
    assert "nameserver 10.77.0.53" in resolv.read_text()
    # the address really works: a TCP service on the host end answers
    with socket.socket() as srv:
        srv.bind(("10.77.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        r = in_ns(ns, f"import socket; socket.create_connection(('10.77.0.1', {port}), 5).close(); print('ok')")
        assert r.stdout.strip() == "ok", r.stderr
    # applied again (the operator changes their mind): the old address goes, no duplicates
    r = in_ns(ns, "from agent.source import netsetup\n"
                  f"netsetup.apply(netsetup.parse_ip_spec('{peer}:10.77.0.3/24'))")
    assert r.returncode == 0, r.stderr
    addrs = run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr", "show", "dev", peer]).stdout
    assert "10.77.0.3/24" in addrs and "10.77.0.2/" not in addrs


def test_unknown_interface_is_named(netns):
    ns, peer = netns
    r = in_ns(ns, "from agent.source import netsetup\n"
                  "from agent.errors import UsageError\n"
                  f"nics = [netsetup.Nic('{peer}', None, operstate='up', carrier=True)]\n"
                  "try:\n"
                  "    netsetup.apply(netsetup.parse_ip_spec('eth9:10.77.0.2/24'), nics=nics)\n"
                  "except UsageError as e:\n"
                  "    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert f"network interface eth9 does not exist here (this machine has: {peer})" in r.stdout


def test_every_change_can_be_taken_back(netns, tmp_path):
    """The one live-network service: a static set-up and the iSCSI borrowed address (the
    source server's own) are each undone exactly; the NIC's own address survives the borrow."""
    ns, peer = netns
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.99.0.1\n")
    code = ("from agent.source import netsetup\n"
            f"nics = [netsetup.Nic('{peer}', None, operstate='up', carrier=True)]\n"
            f"base = netsetup.apply(netsetup.parse_ip_spec('{peer}:10.77.0.2/24'), nics=nics)\n"
            # a veth has no device link, so list_nics() leaves it out: its state by hand
            f"nic = netsetup.Nic('{peer}', None, operstate='up', carrier=True, addresses=netsetup.addresses_by_iface()['{peer}'])\n"
            "assert nic.ipv4 == ['10.77.0.2/24'], nic\n"
            # the borrowed address and a host route to a portal outside its network
            "b = netsetup.borrow_address(nic, '10.88.0.21/24', gateway='10.77.0.1', reach=['10.66.0.5', '10.88.0.9'])\n"
            "print('local', b.local, 'added', b.added, 'routes', b.routes)\n"
            f"s = netsetup.apply(netsetup.parse_ip_spec('{peer}:10.77.0.3/24,gw=10.77.0.1,dns=10.77.0.53'),"
            f" nics=nics, resolv_conf='{resolv}')\n"
            "s.undo(); s.undo()\n"        # twice: the second is a no-op
            "import subprocess\n"
            f"print('after-static', subprocess.run(['ip', '-o', '-4', 'addr', 'show', 'dev', '{peer}'], "
            "capture_output=True, text=True).stdout.split())\n"
            "b.undo()\n")
    r = in_ns(ns, code)
    assert r.returncode == 0, r.stderr
    assert f"local 10.88.0.21 added ['10.88.0.21/24'] routes ['10.66.0.5/32 via 10.77.0.1 dev {peer}']" \
        in r.stdout, r.stdout
    after_static = r.stdout.split("after-static", 1)[1]
    # undoing the static set-up brought back what it flushed (the first address and the
    # borrowed one), dropped its own, and restored resolv.conf
    assert "10.77.0.2/24" in after_static and "10.88.0.21/24" in after_static
    assert "10.77.0.3/24" not in after_static
    assert resolv.read_text() == "nameserver 10.99.0.1\n"
    # after the borrow's undo: only the NIC's own address, no route to the portal
    addrs = run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr", "show", "dev", peer]).stdout
    assert "10.77.0.2/24" in addrs and "10.88.0.21" not in addrs, addrs
    routes = run(["ip", "netns", "exec", ns, "ip", "route", "show"]).stdout
    assert "10.66.0.5" not in routes and "default" not in routes, routes
