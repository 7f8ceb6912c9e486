"""The HTTP API: ``schema`` (the contract), ``identity`` (who asks), ``streaming`` (backpressure),
and ``app`` (the Ollama- and OpenAI-compatible routes). It serves loopback or a unix socket only."""

from __future__ import annotations

import ipaddress


def loopback_only(host: str) -> bool:
    """Whether ``host`` is a loopback address: the only TCP addresses the server may bind."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["loopback_only"]
