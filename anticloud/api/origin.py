"""Whether a request may come from where it says: loopback names only over TCP, and no foreign Origin.

A browser on the workstation is the one client that can be made to send requests it did not mean
to: a page from elsewhere can point a name it controls at 127.0.0.1 (DNS rebinding: the request
then carries that name in ``Host``), or post to the appliance from its own origin (the request
carries ``Origin``). So, for every request, before anything else:

* over TCP, ``Host`` must name the loopback (``127.0.0.0/8``, ``localhost``, ``[::1]``), with
  any port; on the unix socket no browser can reach, ``Host`` is whatever the client says;
* an ``Origin``, where one is sent, must be exactly ``http://`` and that ``Host``: the
  console's own. ``null`` (a sandboxed or local file page) is foreign.

Pure: headers in, a reason (for a 403, recorded) or None out.
"""

from __future__ import annotations

from anticloud.api import loopback_only


def _hostname(host: str) -> str:
    """``host`` without its port: ``[::1]:8080`` -> ``::1``, ``localhost:1`` -> ``localhost``."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_name(host: str) -> bool:
    """Whether a ``Host`` header names the loopback, by the rule the server binds with."""
    return loopback_only(_hostname(host.strip().lower()))


def refusal(host: str | None, origin: str | None, tcp: bool) -> str | None:
    """Why a request with these headers is refused, or None if it may go on."""
    if tcp and not (host and is_loopback_name(host)):
        return (f"the Host header {host!r} is not a loopback name; the appliance answers only to "
                "127.0.0.1, localhost or [::1] (a page elsewhere pointing its own name here is refused)")
    if origin is not None and (host is None or origin != f"http://{host}"):
        return f"requests from the origin {origin!r} are refused; only the appliance's own page may call it"
    return None
