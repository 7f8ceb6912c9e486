"""The [cluster] settings and the layer split the engine records: pure rules."""

from __future__ import annotations

import ipaddress

import pytest

from anticloud.cluster import settings, split
from anticloud.config import DEFAULTS, merge
from anticloud.errors import ConfigError


def section(**values: object) -> dict[str, object]:
    return {**settings.DEFAULTS, **values}


def test_no_interface_is_no_cluster_and_the_default_policy_has_none() -> None:
    assert settings.link(section()) is None
    assert settings.link(section(address="10.77.0.1/30", peers=["10.77.0.2"])) is None  # not switched on yet
    assert settings.link(merge({}, "default")["cluster"]) is None
    assert DEFAULTS["cluster"] == settings.DEFAULTS


def test_a_configured_link_is_read_with_its_pins() -> None:
    link = settings.link(section(interface="eth1", address="10.77.0.1/30", peers=["10.77.0.2"],
                                 macs=["10.77.0.2 = 02:AA:00:00:00:02"]))
    assert link is not None
    assert (link.interface, link.address, link.peers) == ("eth1", ipaddress.IPv4Interface("10.77.0.1/30"),
                                                          (ipaddress.IPv4Address("10.77.0.2"),))
    assert link.macs == ((ipaddress.IPv4Address("10.77.0.2"), "02:aa:00:00:00:02"),)


@pytest.mark.parametrize("values, says", [
    ({"interface": "eth1", "peers": ["10.77.0.2"]}, "needs cluster.address"),
    ({"interface": "", "address": "10.77.0.1"}, "needs its prefix"),
    ({"interface": "eth 1", "address": "10.77.0.1/30"}, "not an interface name"),
    ({"interface": "eth1", "address": "10.77.0.1"}, "needs its prefix"),
    ({"interface": "eth1", "address": "fe80::1/64"}, "cluster:"),
    ({"interface": "eth1", "address": "10.77.0.1/30", "peers": ["ten"]}, "cluster:"),
    ({"interface": "eth1", "address": "10.77.0.1/30", "macs": ["02:00:00:00:00:02"]}, "ADDRESS=MAC"),
    ({"port": 0}, "cluster.port must be a TCP port"),
    ({"port": 50053}, "must differ"),
    ({"certificates": ["sha256:abc"]}, "sha256:<64 hex digits>"),
])
def test_a_misspelt_setting_is_refused_in_one_line(values: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as refused:
        merge({"cluster": values}, "config.toml")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("config.toml: ")


def test_what_the_guard_would_refuse_is_still_a_valid_setting() -> None:
    """A peer outside the prefix is the guard's to refuse at start (recorded), not the config's."""
    doc = merge({"cluster": {"interface": "eth1", "address": "10.77.0.1/24", "peers": ["10.78.0.9"]}}, "c")
    link = settings.link(doc["cluster"])
    assert link is not None and link.problems()


def test_the_last_gpu_layers_of_the_n_plus_one_go_to_the_remote_device() -> None:
    layers = split.assign(18, 10, [("RPC0", 1 << 30)])
    assert layers == ["CPU"] * 9 + ["RPC0"] * 10
    described = split.describe(18, 10, [("RPC0", 1 << 30)])
    assert described["remote_layers"] == 10
    assert described["runs"] == [{"device": "CPU", "first": 0, "last": 8},
                                 {"device": "RPC0", "first": 9, "last": "output"}]


def test_no_gpu_layers_or_no_device_keeps_everything_on_the_cpu() -> None:
    assert set(split.assign(18, 0, [("RPC0", 1)])) == {"CPU"}
    assert set(split.assign(18, 10, [])) == {"CPU"}
    assert split.assign(18, 99, [("RPC0", 1)]) == ["RPC0"] * 19


def test_two_workers_share_the_layers_by_their_free_memory() -> None:
    layers = split.assign(7, 8, [("RPC0", 1), ("RPC1", 3)])
    assert layers == ["RPC0"] * 2 + ["RPC1"] * 6
