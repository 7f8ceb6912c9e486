"""Who is asking: the identity every protected route needs, recorded in every inference.

Invariants:

* An identity is a live per-person bearer token (``token:NAME``) or, on the unix socket, the
  peer's real uid (``uid:N``, anticloud.api.identity), unless the policy requires tokens there
  too (``api.tokens_on_unix_socket``). Anything else is refused (401).
* A presented token is compared in constant time with every stored one
  (`anticloud.tokens.identify`), and the tokens are read afresh for each request, so a
  revocation is in force at once.
* A unix socket peer whose real uid could not be established is refused (503), never guessed:
  recording a wrong uid would put one person's requests under another's name.
* The caller takes over the policy last recorded (`Appliance.refresh`) before asking.
"""

from __future__ import annotations

from starlette.requests import Request

from anticloud.api.body import ApiError
from anticloud.api.identity import PEER_PROBLEM, PEER_UID
from anticloud.runtime import Appliance


def identify(appliance: Appliance, request: Request) -> str:
    """The identity of whoever sent ``request``, or ApiError (401, or 503 for an unknown peer)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        token = appliance.token_for(header[7:].strip())
        if token is None:
            raise ApiError(401, "the bearer token is unknown or revoked")
        return f"token:{token.name}"
    uid = request.scope.get(PEER_UID)
    if not appliance.setting("api", "tokens_on_unix_socket"):
        if uid is not None:
            return f"uid:{uid}"
        if PEER_PROBLEM in request.scope:  # a unix socket peer whose real uid is unknown: never guess
            raise ApiError(503, request.scope[PEER_PROBLEM])
    raise ApiError(401, "a bearer token is required (anticloud tokens create NAME)")
