"""Who acted: the ``actor`` member of every record the appliance writes.

The rule, stated once (docs/records.md, "Who acted"):

* a local process -- a CLI command, or the server acting on its own (its start and stop, the
  air-gap watch, drift, unloading idle models): ``{"uid": <real uid>, "user": <login name>}``;
* an API request identified by a bearer token: ``{"token": <the token's person>}``, plus the
  ``uid`` and ``user`` of the unix socket's peer when it came over the socket (TCP has no uid);
* an API request identified by its unix socket peer alone: ``{"uid": ..., "user": ...}``;
* a request refused before it was identified: the socket peer's ``uid`` and ``user``, or
  ``{}`` (anonymous) over TCP or where the peer's uid is unknown.

``user`` is the login name the password database gives for the uid, omitted where it has none.
Uids are real ones, outside any user namespace the engine runs in (`anticloud.peercred`): under
``--isolate`` the engine's own uid reads as 0, which is nobody's identity.

The actor in force is context-local: the API's guard puts the request's in force (`acting`) for
the time it handles it, and the threads it starts for the request run in a copy of its context;
anything else acts as this process (`local`). `attach` makes a ledger writer stamp the actor in
force on every record whose caller gave none (`ledger.LedgerWriter.stamp`), so no call site
names it. Records that outlive their request's context (counted rejections) carry it explicitly.

The person an auditor reads from a record (`person`): the token's person, else the user, else
``uid:N``, else "anonymous"; records written before actors were recorded fall back to their
``client`` (``inference.begin``) or ``identity`` (``request.rejected``).
"""

from __future__ import annotations

import functools
import os
import pwd
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from anticloud.errors import IdentityUnavailable
from anticloud.peercred import real_uid
from ledger import LedgerWriter

Actor = dict[str, Any]
NameOf = Callable[[int], str | None]
TOKEN_PREFIX, UID_PREFIX, ANONYMOUS = "token:", "uid:", "anonymous"

_current: ContextVar[Actor | None] = ContextVar("anticloud_actor", default=None)


def actor_of(uid: int | None, user: str | None = None, token: str | None = None) -> Actor:
    """The actor for a token's person and/or a uid with its login name; ``{}`` for nobody known. Pure."""
    actor: Actor = {} if token is None else {"token": token}
    if uid is not None:
        actor["uid"] = int(uid)  # canonical JSON: an integer, never a bool or a float
        if user:
            actor["user"] = user
    return actor


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str | None:
    """The login name of ``uid`` in the password database, or None if it has no entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def of_identity(identity: str, peer_uid: int | None, name_of: NameOf = user_name) -> Actor:
    """The actor of an API request from its identity as the gate names it (``token:NAME``, ``uid:N``,
    ``anonymous``) and the unix socket peer's real uid (None over TCP, or if it is unknown)."""
    peer = actor_of(peer_uid, None if peer_uid is None else name_of(peer_uid))
    if identity.startswith(TOKEN_PREFIX):
        return {"token": identity.removeprefix(TOKEN_PREFIX), **peer}
    return peer


@functools.cache
def _process() -> Actor:
    try:
        uid = real_uid()
    except (IdentityUnavailable, OSError, ValueError):  # no /proc, or an unreadable map: as the kernel says here
        uid = os.getuid()
    return actor_of(uid, user_name(uid))


def local() -> Actor:
    """This process's actor: its real uid and that uid's login name."""
    return dict(_process())


def current() -> Actor:
    """The actor in force in this context: the request's being handled, else this process's."""
    actor = _current.get()
    return local() if actor is None else dict(actor)


@contextmanager
def acting(actor: Mapping[str, Any]) -> Iterator[None]:
    """Put ``actor`` in force in this context until the block ends."""
    token = _current.set(dict(actor))
    try:
        yield
    finally:
        _current.reset(token)


def stamp() -> dict[str, Any]:
    """What `attach` adds to a record's data: the actor in force."""
    return {"actor": current()}


def attach(writer: LedgerWriter) -> LedgerWriter:
    """Make ``writer`` record the actor in force on every record whose caller names none."""
    writer.stamp = stamp
    return writer


def person(data: Mapping[str, Any]) -> str | None:
    """Who a record's ``data`` says acted, as an auditor reads it; None if it says nothing. Pure."""
    actor = data.get("actor")
    if isinstance(actor, Mapping):
        for key in ("token", "user"):
            value = actor.get(key)
            if isinstance(value, str) and value:
                return value
        uid = actor.get("uid")
        return f"{UID_PREFIX}{uid}" if isinstance(uid, int) and not isinstance(uid, bool) else ANONYMOUS
    client = data.get("client", data.get("identity"))
    if isinstance(client, str) and client:
        return client.removeprefix(TOKEN_PREFIX)
    return None
