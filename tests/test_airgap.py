"""The air-gap guard: its rules on synthetic tables, and the real state on both sides of a namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_down_interface_does_not_count_whatever_its_addresses() -> None:
    assert assess(state(Interface(2, "eth0", False, False, ("192.0.2.2/24",)))).isolated


def test_an_interface_up_without_an_address_is_a_network() -> None:
    """Frames cross a live link whatever its IP configuration (veth, tap, macvlan)."""
    verdict = assess(state(Interface(3, "veth0", True, False)))
    assert not verdict.isolated
    assert verdict.reasons() == ["interface veth0 is up (no address)"]
    assert verdict.to_json()["interfaces"] == [{"name": "veth0", "addresses": []}]


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


ADDRESSLESS_LINK = """
import json
from pyroute2 import IPRoute
from anticloud.airgap import bring_loopback_up, read_state, assess
bring_loopback_up()
with IPRoute() as ipr:  # a veth pair with both ends in this namespace: nothing is sent anywhere
    ipr.link("add", ifname="link0", kind="veth", peer="link1")
    ipr.link("set", index=ipr.link_lookup(ifname="link0")[0], state="up")
state = read_state()
verdict = assess(state)
print(json.dumps({"isolated": verdict.isolated, "reasons": verdict.reasons(),
                  "addresses": [list(i.addresses) for i in state.interfaces if i.name == "link0"]}))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_real_link_up_without_an_address_is_refused() -> None:
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", ADDRESSLESS_LINK],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["addresses"] == [[]], "the kernel gave the link an address: the test no longer tests the rule"
    assert not found["isolated"] and "interface link0 is up (no address)" in found["reasons"]


REFUSED_START = """
import os, sys
from pyroute2 import IPRoute
from anticloud.airgap import bring_loopback_up
bring_loopback_up()
with IPRoute() as ipr:
    ipr.link("add", ifname="link0", kind="veth", peer="link1")
    ipr.link("set", index=ipr.link_lookup(ifname="link0")[0], state="up")
os.execv(sys.executable, [sys.executable, "-m", "anticloud", "--home", sys.argv[1], "run", "hello"])
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_the_engine_refuses_to_start_beside_a_link_up_without_an_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = subprocess.run([sys.executable, "-m", "anticloud", "--home", str(home), "init"], capture_output=True,
                          text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-c", REFUSED_START,
                          str(home)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 4, (run.stdout, run.stderr)
    assert "interface link0 is up (no address)" in run.stderr
    last = json.loads((home / "ledger.jsonl").read_bytes().splitlines()[-1])
    assert last["kind"] == "engine.refused" and last["data"]["reason"] == "network reachable"
    assert last["data"]["airgap"]["interfaces"] == [{"name": "link0", "addresses": []}]


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
