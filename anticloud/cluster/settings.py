"""The ``[cluster]`` settings, read into the air-gap guard's one exception and the link's keys.

An empty ``cluster.interface`` means no cluster: the guard then allows no interface at all.
What makes a link acceptable (a small prefix, peers inside it, pinned MACs) is the guard's
rule (`anticloud.airgap.ClusterLink.problems`); here only the spelling is checked, so a
setting the guard would refuse is still recorded, and its refusal too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from anticloud.airgap import ClusterLink
from anticloud.errors import ConfigError

DEFAULTS: dict[str, Any] = {"interface": "", "address": "", "peers": [], "macs": [], "port": 50052,
                            "rpc_port": 50053, "certificates": []}
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1; no "/", ":" or space


def link(section: Mapping[str, Any]) -> ClusterLink | None:
    """The configured link, or None while ``cluster.interface`` is empty; ConfigError if a value
    is misspelt. The interface is the switch: set the address and peers first, then it."""
    try:
        address = ipaddress.IPv4Interface(section["address"]) if section["address"] else None
        if not all(isinstance(peer, str) for peer in section["peers"]):
            raise ValueError("cluster.peers must list addresses written as text, e.g. [\"10.77.0.2\"]")
        peers = tuple(ipaddress.IPv4Address(peer) for peer in section["peers"])
        macs = tuple(_mac(entry) for entry in section["macs"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cluster: {exc}") from None
    if section["address"] and "/" not in section["address"]:
        raise ConfigError("cluster.address needs its prefix, e.g. 10.77.0.1/30")
    if not section["interface"]:
        return None
    if not INTERFACE_NAME.fullmatch(section["interface"]):
        raise ConfigError(f"cluster.interface {section['interface']!r} is not an interface name")
    if address is None:
        raise ConfigError("cluster.interface needs cluster.address (set the address and peers first)")
    return ClusterLink(section["interface"], address, peers, macs)


def _mac(entry: str) -> tuple[ipaddress.IPv4Address, str]:
    address, sep, mac = str(entry).partition("=")
    if not sep:
        raise ValueError(f"cluster.macs entry {entry!r} is not ADDRESS=MAC")
    return ipaddress.IPv4Address(address.strip()), mac.strip().lower()


def check(section: Mapping[str, Any], where: str) -> None:
    """The spelling of every ``[cluster]`` setting (config.py's rules call this)."""
    try:
        link(section)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for key in ("port", "rpc_port"):
        if not 0 < section[key] < 65536:
            raise ConfigError(f"{where}: cluster.{key} must be a TCP port (1-65535)")
    if section["port"] == section["rpc_port"]:
        raise ConfigError(f"{where}: cluster.port and cluster.rpc_port must differ")
    if not all(isinstance(f, str) and FINGERPRINT.fullmatch(f) for f in section["certificates"]):
        raise ConfigError(f"{where}: cluster.certificates must list fingerprints written sha256:<64 hex digits>")
