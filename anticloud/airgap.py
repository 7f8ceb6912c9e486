"""The air-gap guard: is any network reachable? Decided from interface and route state alone.

The state is read over netlink (links, addresses and routes, IPv4 and IPv6, every routing
table); no packet is ever sent. The rules (`assess`, pure) say the appliance is isolated
only when:

* no interface other than loopback is up, with or without an address: Ethernet frames cross
  a live link whatever its IP configuration (veth, tap, macvlan; a program with a raw or
  packet socket needs no address), and "up" is what an operator or a program set, whether or
  not a carrier is present yet, and
* no route leaves through an interface other than loopback (blackhole, unreachable and
  prohibit routes lead nowhere and do not count).

Limits (SECURITY.md): the state is sampled, so a network that comes and goes between two
checks is not seen; and the guard trusts the kernel's own account of its interfaces.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

IFF_UP, IFF_LOOPBACK = 0x1, 0x8
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
               7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
NOWHERE = frozenset(("blackhole", "unreachable", "prohibit"))


@dataclass(frozen=True, slots=True)
class Interface:
    index: int
    name: str
    up: bool
    loopback: bool
    addresses: tuple[str, ...] = ()


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
class NetworkState:
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class AirGap:
    """The guard's verdict, with the evidence behind it."""

    isolated: bool
    interfaces: tuple[Interface, ...] = field(default=())  # the offending ones
    routes: tuple[Route, ...] = field(default=())

    def reasons(self) -> list[str]:
        found = [f"interface {i.name} is up with {', '.join(i.addresses)}" if i.addresses
                 else f"interface {i.name} is up (no address)" for i in self.interfaces]
        return found + [f"route {r}" for r in self.routes]

    def to_json(self) -> dict[str, Any]:
        return {"isolated": self.isolated,
                "interfaces": [{"name": i.name, "addresses": list(i.addresses)} for i in self.interfaces],
                "routes": [str(r) for r in self.routes]}


def assess(state: NetworkState) -> AirGap:
    """The pure rule: which interfaces and routes make a network reachable."""
    loopbacks = {i.name for i in state.interfaces if i.loopback}
    interfaces = tuple(i for i in state.interfaces if not i.loopback and i.up)
    routes = tuple(r for r in state.routes if r.device not in loopbacks and r.type not in NOWHERE)
    return AirGap(not interfaces and not routes, interfaces, routes)


FIX_HINT = ("Disconnect the network (bring the interfaces down and remove their routes), or run the engine "
            "in its own network namespace: `anticloud serve --isolate` / `anticloud run --isolate`, or the "
            "systemd unit tools/anticloud.service (PrivateNetwork=yes).")


def read_state() -> NetworkState:
    """Read links, addresses and routes over netlink. Sends nothing to any network."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names: dict[int, str] = {}
        flags: dict[int, int] = {}
        for link in ipr.get_links():
            names[link["index"]] = link.get_attr("IFLA_IFNAME")
            flags[link["index"]] = link["flags"]
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
    interfaces = tuple(Interface(i, names[i], bool(flags[i] & IFF_UP), bool(flags[i] & IFF_LOOPBACK),
                                 tuple(addresses.get(i, ()))) for i in sorted(names))
    return NetworkState(interfaces, tuple(routes))


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
