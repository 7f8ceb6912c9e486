"""The HTTP API. It serves loopback or a unix socket only.

Layers, each depending only on those above it and on the Appliance's public methods:

* ``schema``     -- the request contract, which also makes /openapi.json;
* ``identity``   -- the unix socket peer's real uid; ``connections``, ``listen`` -- the server's limits and socket;
* ``body``       -- reading a request's body within its limit, strictly, against the contract;
* ``origin``     -- whether a request may come from where it says: loopback Host, the page's own Origin;
* ``sessions``   -- console sessions: a person's token exchanged for a cookie, and their ends;
* ``gate``       -- who is asking: a bearer token, a console session, or the peer's uid;
* ``streaming``  -- generation in a worker thread, with backpressure;
* ``generation`` -- a recorded generation, started, streamed or collected;
* ``ollama``, ``openai``, ``embeddings``, ``operator``, ``console`` -- the route families;
* ``rejections`` -- refused requests, recorded compactly;
* ``app``        -- the assembly: routes, the gate on each, and one table of error statuses.
"""

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
