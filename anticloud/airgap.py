"""The air-gap guard: is any network reachable? Decided from interface, route and neighbour state alone.

The state is read over netlink (links, addresses, routes and neighbours, IPv4 and IPv6, every
routing table); no packet is ever sent. The rules (`assess`, pure) say the appliance is
isolated only when:

* no interface other than loopback is up, with or without an address: Ethernet frames cross
  a live link whatever its IP configuration (veth, tap, macvlan; a program with a raw or
  packet socket needs no address), and "up" is what an operator or a program set, whether or
  not a carrier is present yet, and
* no route leaves through an interface other than loopback (blackhole, unreachable and
  prohibit routes lead nowhere and do not count).

The one exception, configured and recorded (`ClusterLink`, for a model split across two
machines): a named cluster interface may be up, provided that

* its only address is the configured IPv4 address, in a prefix of at most /28 (no IPv6, not
  even link-local: operators disable IPv6 on it), and every peer lies inside that prefix;
* its only routes are the kernel's own for that address: the on-link route to the prefix in
  the main table (no gateway), and in the local table the local route to our address and
  broadcast routes inside the prefix. A default route in any table, a gateway, a wider
  prefix or any IPv6 route through it still breaks the air gap;
* every neighbour the kernel knows on it is a configured peer, with its pinned MAC address
  where one is pinned (an IPv6 neighbour, or any other address, is a finding);
* every other interface is down, as without the exception.

A cluster interface that is down is no breach (it is only less reachable); one that does not
exist is a finding. Without a `ClusterLink` nothing is excepted, whatever the state.

Limits (SECURITY.md): the state is sampled, so a network that comes and goes between two
checks is not seen; the guard trusts the kernel's own account of its interfaces; and a
neighbour appears only once the kernel has exchanged a frame with it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

IFF_UP, IFF_LOOPBACK, IFF_POINTOPOINT, IFF_NOARP = 0x1, 0x8, 0x10, 0x80
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
               7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
NOWHERE = frozenset(("blackhole", "unreachable", "prohibit"))
NUD_STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe",
              0x20: "failed", 0x40: "noarp", 0x80: "permanent"}
TABLE_MAIN, TABLE_LOCAL = 254, 255
# The cluster prefix holds at most 14 hosts: a pair or a rack, never a site's network.
SMALLEST_PREFIX = 28
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True, slots=True)
class Interface:
    index: int
    name: str
    up: bool
    loopback: bool
    addresses: tuple[str, ...] = ()
    mac: str | None = None
    arp: bool = True  # IFF_NOARP unset: an Ethernet-like link whose neighbours the kernel resolves
    point_to_point: bool = False  # IFF_POINTOPOINT: a tunnel's end (tun, WireGuard, ppp), not a cable


@dataclass(frozen=True, slots=True)
class Route:
    family: int  # 4 or 6
    table: int
    type: str
    destination: str  # "default" or "address/prefix"
    device: str
    gateway: str | None = None

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"IPv{self.family} {self.type} {self.destination}{via} dev {self.device} (table {self.table})"


@dataclass(frozen=True, slots=True)
class Neighbour:
    family: int  # 4 or 6
    address: str
    device: str
    mac: str | None
    state: str  # reachable, stale, failed, incomplete, permanent, noarp, delay, probe or none

    def __str__(self) -> str:
        return f"{self.address} ({self.mac or 'no MAC'}, {self.state}) on {self.device}"


@dataclass(frozen=True, slots=True)
class NetworkState:
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]
    neighbours: tuple[Neighbour, ...] = ()
    # Where net.ipv4.conf.NAME.route_localnet is on ("all" included): 127.0.0.0/8 is then routable
    # from outside, and anything listening on loopback (the RPC server, the API) is on the cable.
    route_localnet: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterLink:
    """The guard's one exception: a cable between the machines that share a model, and nothing else."""

    interface: str
    address: IPv4Interface  # this end, with its prefix: 10.77.0.1/30
    peers: tuple[IPv4Address, ...]
    macs: tuple[tuple[IPv4Address, str], ...] = ()  # pinned, lower-case aa:bb:cc:dd:ee:ff

    def problems(self) -> list[str]:
        """What is wrong with the link itself, whatever the network's state."""
        net, found = self.address.network, []
        if net.prefixlen < SMALLEST_PREFIX:
            found.append(f"cluster prefix {net} is larger than /{SMALLEST_PREFIX} (at most 14 hosts)")
        if not _usable(self.address.ip, net):
            found.append(f"cluster address {self.address} is its prefix's network or broadcast address")
        ip = self.address.ip
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            found.append(f"cluster address {self.address} is not a unicast address for a cable")
        if not self.peers:
            found.append("cluster link has no peers")
        if len(set(self.peers)) != len(self.peers):
            found.append("a cluster peer is listed twice (one RPC server serves one engine connection)")
        for peer in self.peers:
            if peer == self.address.ip:
                found.append(f"cluster peer {peer} is this machine's own address")
            elif peer not in net:
                found.append(f"cluster peer {peer} is outside the prefix {net}")
            elif not _usable(peer, net):
                found.append(f"cluster peer {peer} is the network or broadcast address of {net}")
        return found + self._mac_problems()

    def _mac_problems(self) -> list[str]:
        found, pinned = [], set[IPv4Address]()
        for peer, mac in self.macs:
            if peer not in self.peers:
                found.append(f"MAC address pinned for {peer}, which is not a cluster peer")
            if peer in pinned:
                found.append(f"MAC address pinned twice for {peer}")
            if not MAC.fullmatch(mac):
                found.append(f"malformed MAC address {mac!r} for {peer} (want lower-case aa:bb:cc:dd:ee:ff)")
            pinned.add(peer)
        return found

    def to_json(self) -> dict[str, Any]:
        return {"interface": self.interface, "address": str(self.address),
                "peers": [str(p) for p in self.peers], "macs": {str(p): m for p, m in self.macs}}


def _usable(address: IPv4Address, net: ipaddress.IPv4Network) -> bool:
    """A host address of ``net``: not its network or broadcast address (a /31 has neither, RFC 3021)."""
    return address in net and (net.prefixlen >= 31
                               or address not in (net.network_address, net.broadcast_address))


@dataclass(frozen=True, slots=True)
class AirGap:
    """The guard's verdict, with the evidence behind it."""

    isolated: bool
    interfaces: tuple[Interface, ...] = field(default=())  # the offending ones
    routes: tuple[Route, ...] = field(default=())
    findings: tuple[str, ...] = field(default=())  # what breaks the cluster exception's conditions
    cluster: ClusterLink | None = None  # the exception in force, if any

    def reasons(self) -> list[str]:
        found = []
        for i in self.interfaces:
            text = (f"interface {i.name} is up with {', '.join(i.addresses)}" if i.addresses
                    else f"interface {i.name} is up (no address)")
            if self.cluster is not None and i.name == self.cluster.interface:
                text += f" (the cluster interface may have {self.cluster.address} only)"
            found.append(text)
        return found + [f"route {r}" for r in self.routes] + list(self.findings)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "isolated": self.isolated,
            "interfaces": [{"name": i.name, "addresses": list(i.addresses)} for i in self.interfaces],
            "routes": [str(r) for r in self.routes]}
        if self.cluster is not None:  # records made without the exception keep their shape
            doc |= {"findings": list(self.findings), "cluster": self.cluster.to_json()}
        return doc


def assess(state: NetworkState, link: ClusterLink | None = None) -> AirGap:
    """The pure rule: which interfaces and routes make a network reachable, beyond ``link`` if given."""
    loopbacks = {i.name for i in state.interfaces if i.loopback}
    interfaces = tuple(i for i in state.interfaces if not i.loopback and i.up and not _excepted(i, link))
    routes = tuple(r for r in state.routes if r.device not in loopbacks and r.type not in NOWHERE
                   and not (link is not None and _cluster_route(r, link)))
    if link is None:
        return AirGap(not interfaces and not routes, interfaces, routes)
    findings = link.problems()
    cluster = [i for i in state.interfaces if i.name == link.interface]
    if not cluster:
        findings.append(f"cluster interface {link.interface} does not exist")
    elif cluster[0].loopback:
        findings.append(f"cluster interface {link.interface} is a loopback interface")
    elif cluster[0].point_to_point or not cluster[0].arp:
        findings.append(f"cluster interface {link.interface} is a tunnel's end (point-to-point or without ARP), "
                        "not a cable")
    findings += [f"route_localnet is on for {name}: loopback addresses are reachable from the cable"
                 for name in state.route_localnet]
    findings += _neighbour_findings(state.neighbours, link)
    return AirGap(not interfaces and not routes and not findings, interfaces, routes, tuple(findings), link)


def _excepted(interface: Interface, link: ClusterLink | None) -> bool:
    return (link is not None and interface.name == link.interface
            and [_parsed(ipaddress.ip_interface, a) for a in interface.addresses] == [link.address])


def _parsed(parse: Callable[[str], T], text: str) -> T | None:
    try:
        return parse(text)
    except ValueError:
        return None


def _cluster_route(route: Route, link: ClusterLink) -> bool:
    """One of the kernel's own routes for the cluster address, and nothing wider."""
    if route.device != link.interface or route.family != 4 or route.gateway is not None:
        return False
    net = _parsed(ipaddress.ip_network, route.destination)  # "default" is None
    if not isinstance(net, ipaddress.IPv4Network):
        return False
    if route.type == "unicast" and route.table == TABLE_MAIN:
        return net == link.address.network
    if route.type == "local" and route.table == TABLE_LOCAL:
        return net == ipaddress.IPv4Network(link.address.ip)
    if route.type == "broadcast" and route.table == TABLE_LOCAL:
        return net.prefixlen == 32 and net.network_address in link.address.network
    return False


def _neighbour_findings(neighbours: tuple[Neighbour, ...], link: ClusterLink) -> list[str]:
    pinned = dict(link.macs)
    found = []
    for n in neighbours:
        if n.device != link.interface:
            continue
        address = _parsed(ipaddress.ip_address, n.address)
        if n.family != 4 or not isinstance(address, IPv4Address):
            kind = f"IPv{n.family}" if n.family in (4, 6) else f"address family {n.family}"
            found.append(f"{kind} neighbour {n} (the cluster link is IPv4 only)")
        elif address not in link.peers:
            found.append(f"unknown neighbour {n}")
        elif n.mac is not None and address in pinned and n.mac.lower() != pinned[address]:
            found.append(f"neighbour {n} is not the pinned MAC address {pinned[address]}")
    return found


FIX_HINT = ("Disconnect the network (bring the interfaces down and remove their routes), or run the engine "
            "in its own network namespace: `anticloud serve --isolate` / `anticloud run --isolate`, or the "
            "systemd unit tools/anticloud.service (PrivateNetwork=yes).")


def read_state() -> NetworkState:
    """Read links, addresses, routes and neighbours over netlink. Sends nothing to any network."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names: dict[int, str] = {}
        flags: dict[int, int] = {}
        macs: dict[int, str | None] = {}
        for link in ipr.get_links():
            names[link["index"]] = link.get_attr("IFLA_IFNAME")
            flags[link["index"]] = link["flags"]
            mac = link.get_attr("IFLA_ADDRESS")
            macs[link["index"]] = mac.lower() if mac and not link["flags"] & IFF_LOOPBACK else None
        addresses: dict[int, list[str]] = {}
        for addr in ipr.get_addr():
            addresses.setdefault(addr["index"], []).append(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
        routes = []
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            for r in ipr.route("dump", family=family):
                dst = r.get_attr("RTA_DST")
                kind = ROUTE_TYPES.get(r["type"], str(r["type"]))
                routes.append(Route(version, r.get_attr("RTA_TABLE") or r["table"], kind,
                                    f"{dst}/{r['dst_len']}" if dst else "default",
                                    names.get(r.get_attr("RTA_OIF") or 0, "none"), r.get_attr("RTA_GATEWAY")))
        neighbours = []
        for n in ipr.get_neighbours():
            if flags.get(n["ifindex"], 0) & IFF_LOOPBACK:
                continue
            lladdr = n.get_attr("NDA_LLADDR")
            neighbours.append(Neighbour({socket.AF_INET: 4, socket.AF_INET6: 6}.get(n["family"], n["family"]),
                                        str(n.get_attr("NDA_DST")), names.get(n["ifindex"], "none"),
                                        lladdr.lower() if lladdr else None, nud_state(n["state"])))
    interfaces = tuple(Interface(i, names[i], bool(flags[i] & IFF_UP), bool(flags[i] & IFF_LOOPBACK),
                                 tuple(addresses.get(i, ())), macs[i], not flags[i] & IFF_NOARP,
                                 bool(flags[i] & IFF_POINTOPOINT)) for i in sorted(names))
    return NetworkState(interfaces, tuple(routes), tuple(neighbours), route_localnet(["all", *names.values()]))


def route_localnet(names: list[str], conf: Path = Path("/proc/sys/net/ipv4/conf")) -> tuple[str, ...]:
    """The interfaces (and "all") of this network namespace whose route_localnet is on."""
    found = []
    for name in names:
        try:
            if (conf / name / "route_localnet").read_text().strip() != "0":
                found.append(name)
        except OSError:  # an interface without IPv4 configuration, or gone meanwhile
            continue
    return tuple(found)


def nud_state(bits: int) -> str:
    """A neighbour's ``ndm_state`` by name: "reachable", "stale", ..., "none" (0)."""
    return "+".join(name for bit, name in NUD_STATES.items() if bits & bit) or "none"


def check() -> AirGap:
    return assess(read_state())


def bring_loopback_up() -> None:
    """Inside a fresh network namespace, loopback starts down: bring it up (nothing else)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for link in ipr.get_links():
            # Already up (systemd's PrivateNetwork=) needs no CAP_NET_ADMIN, which such a unit lacks.
            if link["flags"] & IFF_LOOPBACK and not link["flags"] & IFF_UP:
                ipr.link("set", index=link["index"], state="up")
