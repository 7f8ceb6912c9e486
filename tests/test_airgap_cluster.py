"""The air-gap guard's one exception, the cluster link: its rule on tables shaped like the kernel's, and for real.

The tables below are what Linux 6.x shows for a veth given 10.77.0.1/30 with IPv6 disabled on it; the
namespace test at the end checks that shape against a real kernel before trusting the rule on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest

from anticloud.airgap import ClusterLink, Interface, Neighbour, NetworkState, Route, assess, nud_state
from anticloud.backlog import Backlog
from anticloud.watch import AirGapWatch

LO = Interface(1, "lo", True, True, ("127.0.0.1/8", "::1/128"))
LOOPBACK_ROUTES = (Route(4, 255, "local", "127.0.0.0/8", "lo"), Route(4, 255, "local", "127.0.0.1/32", "lo"),
                   Route(4, 255, "broadcast", "127.255.255.255/32", "lo"), Route(6, 255, "local", "::1/128", "lo"))
OUR_MAC, PEER_MAC = "e2:a3:d6:8d:2d:26", "56:58:4d:19:30:cb"
CLUSTER = Interface(3, "clu0", True, False, ("10.77.0.1/30",), OUR_MAC)
CLUSTER_ROUTES = (Route(4, 254, "unicast", "10.77.0.0/30", "clu0"), Route(4, 255, "local", "10.77.0.1/32", "clu0"),
                  Route(4, 255, "broadcast", "10.77.0.3/32", "clu0"))
PEER = IPv4Address("10.77.0.2")
PEER_SEEN = Neighbour(4, "10.77.0.2", "clu0", PEER_MAC, "reachable")
LINK = ClusterLink("clu0", IPv4Interface("10.77.0.1/30"), (PEER,), ((PEER, PEER_MAC),))


def state(*, interfaces: tuple[Interface, ...] = (CLUSTER,), routes: tuple[Route, ...] = CLUSTER_ROUTES,
          neighbours: tuple[Neighbour, ...] = (PEER_SEEN,)) -> NetworkState:
    return NetworkState((LO, *interfaces), LOOPBACK_ROUTES + routes, neighbours)


def link(address: str = "10.77.0.1/30", peers: tuple[str, ...] = ("10.77.0.2",),
         macs: tuple[tuple[str, str], ...] = ()) -> ClusterLink:
    return ClusterLink("clu0", IPv4Interface(address), tuple(IPv4Address(p) for p in peers),
                       tuple((IPv4Address(a), m) for a, m in macs))


# -- what is allowed ---------------------------------------------------------------------------------------------

def test_the_configured_link_with_its_kernel_routes_and_its_peer_is_isolated() -> None:
    verdict = assess(state(), LINK)
    assert verdict.isolated and verdict.reasons() == []
    assert verdict.to_json() == {
        "isolated": True, "interfaces": [], "routes": [], "findings": [],
        "cluster": {"interface": "clu0", "address": "10.77.0.1/30", "peers": ["10.77.0.2"],
                    "macs": {"10.77.0.2": PEER_MAC}}}
    json.dumps(verdict.to_json())


def test_without_a_link_the_same_state_is_refused_and_the_record_keeps_its_shape() -> None:
    verdict = assess(state())
    assert not verdict.isolated
    assert verdict.reasons() == ["interface clu0 is up with 10.77.0.1/30",
                                 "route IPv4 unicast 10.77.0.0/30 dev clu0 (table 254)",
                                 "route IPv4 local 10.77.0.1/32 dev clu0 (table 255)",
                                 "route IPv4 broadcast 10.77.0.3/32 dev clu0 (table 255)"]
    assert set(verdict.to_json()) == {"isolated", "interfaces", "routes"}
    assert verdict.findings == () and verdict.cluster is None


def test_a_down_cluster_interface_is_no_breach() -> None:
    down = Interface(3, "clu0", False, False, ("10.77.0.1/30",), OUR_MAC)
    assert assess(state(interfaces=(down,), routes=(), neighbours=()), LINK).isolated


def test_peers_not_yet_resolved_and_unpinned_peers_are_allowed() -> None:
    two = link(peers=("10.77.0.2", "10.77.0.3"), address="10.77.0.1/29")
    routes = (Route(4, 254, "unicast", "10.77.0.0/29", "clu0"), Route(4, 255, "local", "10.77.0.1/32", "clu0"),
              Route(4, 255, "broadcast", "10.77.0.7/32", "clu0"))
    cluster = Interface(3, "clu0", True, False, ("10.77.0.1/29",))
    seen = (Neighbour(4, "10.77.0.2", "clu0", None, "incomplete"), Neighbour(4, "10.77.0.3", "clu0", PEER_MAC, "stale"))
    assert assess(state(interfaces=(cluster,), routes=routes, neighbours=seen), two).isolated


def test_neighbours_on_other_interfaces_are_not_the_links_concern() -> None:
    other = Interface(4, "eth0", False, False, (), "02:00:00:00:00:09")
    stranger = Neighbour(4, "192.0.2.9", "eth0", "02:00:00:00:00:0a", "permanent")
    assert assess(state(interfaces=(CLUSTER, other), neighbours=(PEER_SEEN, stranger)), LINK).isolated


# -- what still refuses ------------------------------------------------------------------------------------------

def test_a_second_interface_up_is_refused() -> None:
    verdict = assess(state(interfaces=(CLUSTER, Interface(4, "eth0", True, False))), LINK)
    assert not verdict.isolated
    assert verdict.reasons() == ["interface eth0 is up (no address)"]


@pytest.mark.parametrize("route", [
    Route(4, 254, "unicast", "default", "clu0", "10.77.0.2"),
    Route(4, 100, "unicast", "default", "clu0"),
    Route(4, 254, "unicast", "192.0.2.0/24", "clu0", "10.77.0.2"),
    Route(4, 254, "unicast", "10.77.0.0/30", "clu0", "10.77.0.2"),
    Route(4, 254, "unicast", "10.77.0.0/16", "clu0"),
    Route(4, 254, "unicast", "10.77.0.0/29", "clu0"),
    Route(4, 100, "unicast", "10.77.0.0/30", "clu0"),
    Route(4, 255, "local", "10.77.0.2/32", "clu0"),
    Route(4, 255, "broadcast", "10.77.0.255/32", "clu0"),
    Route(4, 254, "multicast", "224.0.0.0/4", "clu0"),
    Route(6, 254, "unicast", "fe80::/64", "clu0"),
    Route(4, 254, "unicast", "10.77.0.0/30", "eth0"),
    Route(4, 254, "unicast", "10.77.0.0/30", "none"),  # a multipath route names no single device
], ids=str)
def test_every_route_but_the_kernels_own_for_the_link_is_refused(route: Route) -> None:
    verdict = assess(state(routes=(*CLUSTER_ROUTES, route)), LINK)
    assert not verdict.isolated
    assert verdict.reasons() == [f"route {route}"]


def test_a_route_that_leads_nowhere_still_does_not_count() -> None:
    assert assess(state(routes=(*CLUSTER_ROUTES, Route(4, 254, "blackhole", "default", "none"))), LINK).isolated


@pytest.mark.parametrize("extra", ["10.77.0.2/30", "192.0.2.1/24", "fe80::cab:12ff:fe56:9508/64"])
def test_any_other_address_on_the_cluster_interface_is_refused(extra: str) -> None:
    cluster = Interface(3, "clu0", True, False, ("10.77.0.1/30", extra), OUR_MAC)
    verdict = assess(state(interfaces=(cluster,)), LINK)
    assert not verdict.isolated
    assert verdict.reasons() == [f"interface clu0 is up with 10.77.0.1/30, {extra} "
                                 "(the cluster interface may have 10.77.0.1/30 only)"]


def test_the_cluster_interface_up_with_another_address_or_none_is_refused() -> None:
    for addresses in ((), ("10.77.0.5/30",), ("10.77.0.1/29",)):
        cluster = Interface(3, "clu0", True, False, addresses)
        assert not assess(state(interfaces=(cluster,), routes=(), neighbours=()), LINK).isolated, addresses


def test_ipv6_left_on_is_refused_as_the_kernel_shows_it() -> None:
    """What a veth with 10.77.0.1/30 shows once up with IPv6 enabled (Linux 6.x)."""
    cluster = Interface(3, "clu0", True, False, ("10.77.0.1/30", "fe80::cab:12ff:fe56:9508/64"), OUR_MAC)
    ipv6 = (Route(6, 254, "unicast", "fe80::/64", "clu0"),
            Route(6, 255, "local", "fe80::cab:12ff:fe56:9508/128", "clu0"),
            Route(6, 255, "multicast", "ff00::/8", "clu0"))
    multicast = Neighbour(6, "ff02::2", "clu0", "33:33:00:00:00:02", "noarp")
    verdict = assess(state(interfaces=(cluster,), routes=CLUSTER_ROUTES + ipv6,
                           neighbours=(PEER_SEEN, multicast)), LINK)
    assert not verdict.isolated
    assert [i.name for i in verdict.interfaces] == ["clu0"] and verdict.routes == ipv6
    assert verdict.findings == ("IPv6 neighbour ff02::2 (33:33:00:00:00:02, noarp) on clu0 "
                                "(the cluster link is IPv4 only)",)


def test_an_unknown_neighbour_on_the_cable_is_refused() -> None:
    stranger = Neighbour(4, "10.77.0.9", "clu0", "02:00:00:00:00:09", "stale")
    verdict = assess(state(neighbours=(PEER_SEEN, stranger)), LINK)
    assert not verdict.isolated
    assert verdict.reasons() == ["unknown neighbour 10.77.0.9 (02:00:00:00:00:09, stale) on clu0"]
    assert verdict.to_json()["findings"] == verdict.reasons()


def test_a_peer_answering_with_another_mac_is_refused() -> None:
    impostor = Neighbour(4, "10.77.0.2", "clu0", "02:00:00:00:00:66", "reachable")
    verdict = assess(state(neighbours=(impostor,)), LINK)
    assert not verdict.isolated
    assert verdict.findings == ("neighbour 10.77.0.2 (02:00:00:00:00:66, reachable) on clu0 "
                                f"is not the pinned MAC address {PEER_MAC}",)
    # Unpinned, the same peer is welcome with whatever MAC it has.
    assert assess(state(neighbours=(impostor,)), link()).isolated


def test_a_missing_cluster_interface_is_refused() -> None:
    verdict = assess(state(interfaces=(), routes=(), neighbours=()), LINK)
    assert not verdict.isolated
    assert verdict.findings == ("cluster interface clu0 does not exist",)


def test_loopback_cannot_be_the_cluster_interface() -> None:
    on_loopback = ClusterLink("lo", IPv4Interface("10.77.0.1/30"), (PEER,))
    assert assess(state(), on_loopback).findings[-1] == "cluster interface lo is a loopback interface"


# -- the link's own problems -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("configured", "problem"), [
    (link(peers=("10.77.0.6",)), "cluster peer 10.77.0.6 is outside the prefix 10.77.0.0/30"),
    (link(peers=("10.77.0.1",)), "cluster peer 10.77.0.1 is this machine's own address"),
    (link(peers=("10.77.0.3",)), "cluster peer 10.77.0.3 is the network or broadcast address of 10.77.0.0/30"),
    (link(peers=("10.77.0.2", "10.77.0.0")),
     "cluster peer 10.77.0.0 is the network or broadcast address of 10.77.0.0/30"),
    (link(peers=()), "cluster link has no peers"),
    (link(address="10.77.0.3/30"), "cluster address 10.77.0.3/30 is its prefix's network or broadcast address"),
    (link(address="10.77.0.1/24"), "cluster prefix 10.77.0.0/24 is larger than /28 (at most 14 hosts)"),
    (link(macs=(("10.77.0.9", PEER_MAC),)), "MAC address pinned for 10.77.0.9, which is not a cluster peer"),
    (link(macs=(("10.77.0.2", PEER_MAC), ("10.77.0.2", OUR_MAC))), "MAC address pinned twice for 10.77.0.2"),
    (link(macs=(("10.77.0.2", "56:58:4D:19:30:CB"),)),
     "malformed MAC address '56:58:4D:19:30:CB' for 10.77.0.2 (want lower-case aa:bb:cc:dd:ee:ff)"),
    (link(macs=(("10.77.0.2", "56-58-4d-19-30-cb"),)),
     "malformed MAC address '56-58-4d-19-30-cb' for 10.77.0.2 (want lower-case aa:bb:cc:dd:ee:ff)"),
])
def test_a_misconfigured_link_refuses_whatever_the_network(configured: ClusterLink, problem: str) -> None:
    assert configured.problems() == [problem]
    verdict = assess(state(neighbours=()), configured)
    assert not verdict.isolated and problem in verdict.findings


def test_a_peer_outside_the_prefix_refuses_even_with_a_matching_route() -> None:
    """The configuration is checked, not only the kernel's tables built from it."""
    wide = link(address="10.77.0.1/24", peers=("10.77.0.2",))
    routes = (Route(4, 254, "unicast", "10.77.0.0/24", "clu0"), Route(4, 255, "local", "10.77.0.1/32", "clu0"),
              Route(4, 255, "broadcast", "10.77.0.255/32", "clu0"))
    cluster = Interface(3, "clu0", True, False, ("10.77.0.1/24",))
    verdict = assess(state(interfaces=(cluster,), routes=routes), wide)
    assert not verdict.isolated
    assert verdict.interfaces == () and verdict.routes == ()
    assert verdict.findings == ("cluster prefix 10.77.0.0/24 is larger than /28 (at most 14 hosts)",)


@pytest.mark.parametrize(("address", "peers"), [("10.77.0.1/28", ("10.77.0.14",)),
                                                ("10.77.0.0/31", ("10.77.0.1",)),  # RFC 3021: both are hosts
                                                ("10.77.0.1/30", ("10.77.0.2",))])
def test_a_pair_or_a_rack_is_a_well_formed_link(address: str, peers: tuple[str, ...]) -> None:
    assert link(address, peers, macs=tuple((p, PEER_MAC) for p in peers)).problems() == []


# -- drift while serving, through the watch's records ----------------------------------------------------------------

def test_drift_while_serving_is_a_recorded_breach_and_its_end_a_restore() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    watch = AirGapWatch(assess(state(), LINK), "enforce", Backlog(lambda kind, data: records.append((kind, data))),
                        link=LINK)
    watch.observed(state())
    watch.tell()
    assert records == [] and watch.state.label == "isolated"

    stranger = Neighbour(4, "10.77.0.9", "clu0", "02:00:00:00:00:09", "reachable")
    watch.observed(state(neighbours=(PEER_SEEN, stranger)))
    watch.tell()
    assert watch.state.label == "breached"
    [(kind, data)] = records
    assert kind == "airgap.breach"
    evidence = data["airgap"]
    assert evidence["findings"] == ["unknown neighbour 10.77.0.9 (02:00:00:00:00:09, reachable) on clu0"]
    assert evidence["cluster"]["interface"] == "clu0"

    watch.observed(state())
    watch.tell()
    assert [k for k, _ in records] == ["airgap.breach", "airgap.restored"]


def test_a_watch_without_a_link_grants_no_exception() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    watch = AirGapWatch(assess(NetworkState((LO,), LOOPBACK_ROUTES)), "enforce",
                        Backlog(lambda kind, data: records.append((kind, data))))
    watch.observed(state())
    watch.tell()
    assert [k for k, _ in records] == ["airgap.breach"] and "findings" not in records[0][1]["airgap"]


def test_neighbour_states_are_named_as_ip_neigh_names_them() -> None:
    assert [nud_state(b) for b in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0)] == [
        "incomplete", "reachable", "stale", "delay", "probe", "failed", "noarp", "permanent", "none"]


# -- the real kernel, in a network namespace of its own ------------------------------------------------------------

CLUSTER_IN_A_NAMESPACE = """
import json
from ipaddress import IPv4Address, IPv4Interface
from typing import Any
from pyroute2 import IPRoute
from anticloud.airgap import ClusterLink, assess, bring_loopback_up, read_state

def verdict():
    state = read_state()
    return {"isolated": assess(state, link).isolated, "reasons": assess(state, link).reasons(),
            "without_link": assess(state).isolated}

link = ClusterLink("clu0", IPv4Interface("10.77.0.1/30"), (IPv4Address("10.77.0.2"),))
bring_loopback_up()
found = {}
with IPRoute() as ipr:  # a veth pair with both ends in this namespace: nothing leaves it
    ipr.link("add", ifname="clu0", kind="veth", peer="clu1")
    index = ipr.link_lookup(ifname="clu0")[0]
    with open("/proc/sys/net/ipv6/conf/clu0/disable_ipv6", "w") as knob:
        knob.write("1")
    ipr.addr("add", index=index, address="10.77.0.1", prefixlen=30)
    ipr.link("set", index=index, state="up")
    found["kernel_mac"] = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
    state = read_state()
    found["interfaces"] = [[i.name, i.up, list(i.addresses)] for i in state.interfaces]
    found["macs"] = {i.name: i.mac for i in state.interfaces}
    found["routes"] = [str(r) for r in state.routes if r.device == "clu0"]
    found["allowed"] = verdict()

    ipr.route("add", dst="0.0.0.0/0", gateway="10.77.0.2", oif=index)
    found["default_route"] = verdict()
    ipr.route("del", dst="0.0.0.0/0", gateway="10.77.0.2", oif=index)

    ipr.neigh("add", dst="10.77.0.3", lladdr="02:00:00:00:00:03", ifindex=index, state=0x80)  # NUD_PERMANENT
    found["neighbour"] = verdict()
print(json.dumps(found))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_real_cluster_link_is_allowed_and_its_drift_refused() -> None:
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c",
                          CLUSTER_IN_A_NAMESPACE], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    # The kernel shows what the tables above model: otherwise those tests test a fiction.
    assert found["interfaces"] == [["lo", True, ["127.0.0.1/8", "::1/128"]], ["clu1", False, []],
                                   ["clu0", True, ["10.77.0.1/30"]]]
    assert found["macs"]["lo"] is None and found["macs"]["clu0"] == found["kernel_mac"].lower()
    assert sorted(found["routes"]) == sorted(str(r) for r in CLUSTER_ROUTES)
    assert found["allowed"] == {"isolated": True, "reasons": [], "without_link": False}
    assert found["default_route"] == {"isolated": False, "without_link": False,
                                      "reasons": ["route IPv4 unicast default via 10.77.0.2 dev clu0 (table 254)"]}
    assert found["neighbour"] == {"isolated": False, "without_link": False,
                                  "reasons": ["unknown neighbour 10.77.0.3 (02:00:00:00:00:03, permanent) on clu0"]}


# -- what a hostile review found ------------------------------------------------------------------------------

def test_route_localnet_puts_loopback_on_the_cable_and_is_refused() -> None:
    on = NetworkState(state().interfaces, state().routes, state().neighbours, route_localnet=("clu0",))
    verdict = assess(on, LINK)
    assert not verdict.isolated
    assert verdict.findings == ("route_localnet is on for clu0: loopback addresses are reachable from the cable",)


@pytest.mark.parametrize("tunnel", [
    Interface(3, "clu0", True, False, ("10.77.0.1/30",), None, arp=False, point_to_point=True),  # tun, WireGuard
    Interface(3, "clu0", True, False, ("10.77.0.1/30",), OUR_MAC, arp=False),
])
def test_a_tunnels_end_is_not_a_cable(tunnel: Interface) -> None:
    verdict = assess(state(interfaces=(tunnel,)), LINK)
    assert not verdict.isolated and "tunnel's end" in verdict.findings[0]


@pytest.mark.parametrize("address, peers, says", [
    ("10.77.0.1/30", ("10.77.0.2", "10.77.0.2"), "listed twice"),
    ("127.0.0.1/30", ("127.0.0.2",), "not a unicast address for a cable"),
    ("169.254.0.1/30", ("169.254.0.2",), "not a unicast address for a cable"),
])
def test_a_link_that_cannot_be_a_cable_pair_is_refused(address: str, peers: tuple[str, ...], says: str) -> None:
    assert any(says in problem for problem in link(address, peers).problems())
