"""A guard for tests that run third-party clients: any attempt to reach an address off loopback raises.

Installed as an audit hook (PEP 578) on ``socket.connect``, ``socket.sendto`` and
``socket.getaddrinfo``, so a library that phones home (a price list, a tokenizer download,
telemetry) fails the test loudly instead of sending a packet.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

ATTEMPTS: list[str] = []


def _off_loopback(host: object) -> bool:
    if not isinstance(host, str) or host in ("localhost", "appliance", ""):
        return False  # "appliance": the placeholder host of requests sent over a unix socket
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return True  # a name to resolve: only loopback names are ever asked for here


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto"):
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
    else:
        return
    if _off_loopback(host):
        ATTEMPTS.append(f"{event} {host}")
        raise PermissionError(f"the test's network guard refused {event} to {host}: off loopback")


_installed = False


def install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
