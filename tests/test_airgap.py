"""The air-gap guard: its rules on synthetic tables, and the real state on both sides of a namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from anticloud.airgap import Interface, NetworkState, Route, assess, read_state

LO = Interface(1, "lo", True, True, ("127.0.0.1/8", "::1/128"))
LOOPBACK_ROUTES = (Route(4, 255, "local", "127.0.0.0/8", "lo"), Route(6, 255, "local", "::1/128", "lo"))


def state(*interfaces: Interface, routes: tuple[Route, ...] = ()) -> NetworkState:
    return NetworkState((LO, *interfaces), LOOPBACK_ROUTES + routes)


def test_loopback_alone_is_isolated() -> None:
    verdict = assess(state())
    assert verdict.isolated and verdict.reasons() == []


def test_an_interface_up_with_an_address_is_reachable() -> None:
    verdict = assess(state(Interface(2, "eth0", True, False, ("192.0.2.2/24",))))
    assert not verdict.isolated
    assert verdict.reasons() == ["interface eth0 is up with 192.0.2.2/24"]


def test_a_link_local_ipv6_address_alone_counts() -> None:
    assert not assess(state(Interface(2, "eth0", True, False, ("fe80::1/64",)))).isolated


def test_down_or_addressless_interfaces_do_not_count() -> None:
    down = Interface(2, "eth0", False, False, ("192.0.2.2/24",))
    assert assess(state(down, Interface(3, "eth1", True, False))).isolated


def test_any_route_through_another_interface_counts() -> None:
    default = Route(4, 254, "unicast", "default", "wlan0", "192.0.2.1")
    verdict = assess(state(Interface(2, "wlan0", False, False), routes=(default,)))
    assert not verdict.isolated
    assert verdict.reasons() == ["route IPv4 unicast default via 192.0.2.1 dev wlan0 (table 254)"]
    assert not assess(state(routes=(Route(6, 255, "multicast", "ff00::/8", "eth0"),))).isolated


def test_routes_that_lead_nowhere_do_not_count() -> None:
    nowhere = tuple(Route(4, 254, kind, "default", "none") for kind in ("blackhole", "unreachable", "prohibit"))
    assert assess(state(routes=nowhere)).isolated


def test_evidence_is_machine_readable() -> None:
    verdict = assess(state(Interface(2, "eth0", True, False, ("10.0.0.2/8",)),
                           routes=(Route(4, 254, "unicast", "10.0.0.0/8", "eth0"),)))
    doc = verdict.to_json()
    assert doc == {"isolated": False, "interfaces": [{"name": "eth0", "addresses": ["10.0.0.2/8"]}],
                   "routes": ["IPv4 unicast 10.0.0.0/8 dev eth0 (table 254)"]}
    json.dumps(doc)


def test_the_real_host_state_is_read_without_sending_anything() -> None:
    real = read_state()
    assert any(i.loopback for i in real.interfaces)
    # Whatever this machine's network is, the verdict must agree with the interfaces and routes read.
    verdict = assess(real)
    assert verdict.isolated == (not verdict.interfaces and not verdict.routes)


NAMESPACE_CHECK = """
import json
from anticloud.airgap import bring_loopback_up, read_state, assess
bring_loopback_up()
verdict = assess(read_state())
print(json.dumps({"isolated": verdict.isolated, "interfaces": [i.name for i in read_state().interfaces]}))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_fresh_network_namespace_with_loopback_up_is_isolated() -> None:
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", NAMESPACE_CHECK],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"isolated": True, "interfaces": ["lo"]}


def test_the_systemd_unit_keeps_the_engine_off_every_network() -> None:
    import configparser
    from pathlib import Path

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(Path(__file__).resolve().parent.parent / "tools" / "anticloud.service")
    service = unit["Service"]
    assert service["PrivateNetwork"] == "yes" and service["IPAddressDeny"] == "any"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "--uds" in service["ExecStart"] and service["Environment"]
    assert "AF_INET" not in service["RestrictAddressFamilies"]
