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
* A console session's cookie (HttpOnly, SameSite=Strict; `anticloud.api.console`) with the
  page's session key beside it stands for the token's person it was exchanged for, while the
  session lasts and the token lives; the cookie alone stands for nobody.
* A request that carries a token is identified by the token alone, on the unix socket too: an
  unknown one is refused, never taken for the peer's uid, and the refusal is recorded under
  the peer's uid (`caller`), so a wrong token is traced to whoever sent it.
* Over TCP (loopback, or a socket handed to an isolated engine) there is no uid: a token is required.
* The caller takes over the policy last recorded (`Appliance.refresh`) before asking.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from anticloud.api.body import ApiError
from anticloud.api.identity import PEER_PROBLEM, PEER_UID
from anticloud.api.sessions import COOKIE, KEY_HEADER
from anticloud.runtime import Appliance


def identify(appliance: Appliance, request: Request, session: Callable[[str, str], str] | None = None) -> str:
    """The identity of whoever sent ``request``, or ApiError (401, or 503 for an unknown peer).
    ``session`` gives the identity a console session cookie stands for (`anticloud.api.console`)."""
    header = request.headers.get("authorization", "")
    uid = request.scope.get(PEER_UID)
    by_uid = uid is not None and not appliance.setting("api", "tokens_on_unix_socket")
    if header[:7].lower() == "bearer ":
        token = appliance.token_for(header[7:].strip())
        if token is None:
            raise ApiError(401, "the bearer token is unknown, revoked or expired; ask the operator for one "
                                "(anticloud tokens create NAME)" + (", or send none: on this unix socket your uid "
                                                                    "identifies you" if by_uid else ""))
        return f"token:{token.name}"
    if session is not None and (cookie := request.cookies.get(COOKIE)):
        return session(cookie, request.headers.get(KEY_HEADER, ""))  # the console's person, while it lasts
    if by_uid:
        return f"uid:{uid}"
    if PEER_PROBLEM in request.scope:  # a unix socket peer whose real uid is unknown: never guess
        raise ApiError(503, request.scope[PEER_PROBLEM])
    where = "on this unix socket (api.tokens_on_unix_socket)" if uid is not None else "over TCP"
    raise ApiError(401, f"a bearer token is required {where}; ask the operator for one (anticloud tokens create NAME)")


def caller(request: Request) -> str:
    """Who a refused request came from, as far as the kernel says: the unix socket peer's uid, or anonymous."""
    uid = request.scope.get(PEER_UID)
    return "anonymous" if uid is None else f"uid:{uid}"
