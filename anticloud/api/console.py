"""The web console: a chat page for people on the workstation, served by the appliance itself.

The page (``anticloud/console/``) is a client of this same API: every turn goes through
``/api/chat`` or ``/api/generate`` and is recorded like any other request. These routes add
what a browser needs and nothing else:

* the page and its assets, each with a Content-Security-Policy that lets it load nothing but
  its own files and talk to nothing but this origin;
* sign-in: a person's token, sent once, exchanged for an HttpOnly, SameSite=Strict cookie
  (`anticloud.api.sessions`); sign-in, sign-out, lock and idle ends are recorded
  (``session.start``, ``session.end``), and a refused sign-in like any refusal;
* the receipt of one of the caller's own inferences (its two records, their seqs and what they
  say), the models with their signers, and the appliance's status with the ledger's verdict.

Which requests may come at all (Host, Origin) is `anticloud.api.origin`'s rule, applied to
every route before this module sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from anticloud import actor
from anticloud.api.body import ApiError, read_checked
from anticloud.api.sessions import COOKIE, KEY_HEADER, Session, Sessions
from anticloud.runtime import Appliance
from anticloud.tokens import load as load_tokens
from anticloud.trust import TrustStore
from ledger import LedgerError, ProofRequestError, last_record, prove_record, records_backward, sha3_tag, verify_file

ASSETS = Path(__file__).resolve().parent.parent / "console"
_ASSET = re.compile(r"[a-z0-9][a-z0-9.-]*\.(css|js|svg|png|html)")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
VERIFY_EVERY = 60.0  # seconds a ledger verdict shown on the status view may be old
PROOF_KIND = "ledger.proof"
START = "session.start"
END = "session.end"


def wants_page(request: Request) -> bool:
    """A browser asking for ``/`` (it accepts HTML); API clients probing ``/`` keep Ollama's answer."""
    return "text/html" in request.headers.get("accept", "")


class ConsoleRoutes:
    def __init__(self, appliance: Appliance, clock: Any = time.monotonic) -> None:
        self.app = appliance
        self.sessions = Sessions(lambda: int(appliance.setting("api", "session_idle_timeout")), clock)
        self._verdict: dict[str, Any] | None = None
        self._verified_at = -VERIFY_EVERY
        self._verifying = asyncio.Lock()
        self._ends: list[tuple[Session, str]] = []  # sessions over whose session.end is not yet recorded
        self._ending = threading.RLock()
        self._clock = clock

    # -- the page ----------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not _ASSET.fullmatch(name) or not (ASSETS / name).is_file():
            raise ApiError(404, f"no console file {name!r}")
        return FileResponse(ASSETS / name, headers=HEADERS)

    # -- sessions ------------------------------------------------------------------------------

    async def sign_in(self, request: Request, peer: actor.Actor) -> Response:
        """Exchange a token for a session. ApiError(401), recorded by the caller, for a wrong one."""
        body = await read_checked(request, "ConsoleSignIn", self.app)
        token = self.app.token_for(body["token"])
        if token is None:
            raise ApiError(401, "the token is unknown, revoked or expired; ask the operator for one")
        value, key, session = self.sessions.start(token.name, token.short_id)
        try:
            with actor.acting({**peer, "token": token.name}):
                self.app.writer.append(START, {"session": session.ident, "person": token.name, "via": "console",
                                               "idle_timeout": self.sessions.idle_timeout()})
        except BaseException:
            self.sessions.end(value)  # no record, no session
            raise
        response = JSONResponse({"person": token.name, "idle_timeout": self.sessions.idle_timeout(), "key": key},
                                headers=HEADERS)  # the key stays in the page's memory, sent as KEY_HEADER
        response.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/")
        return response

    def identity_of(self, value: str, key: str) -> str:
        """The identity a session cookie and its page key stand for (``token:NAME``); ApiError(401)
        once it is over, its end recorded when it ended by idleness or by its token's revocation."""
        session, why = self.sessions.use(value, key, self._live)
        if session is None or why is not None:
            if session is not None and why is not None:
                self._append_end(session, why)
            raise ApiError(401, "your console session is over" + (f" ({why})" if why else "") + "; sign in again")
        return f"token:{session.person}"

    def _live(self, session: Session) -> bool:
        token = load_tokens(self.app.home).get(session.token_id)
        return token is not None and token.live()

    async def session(self, request: Request, peer: actor.Actor) -> Response:
        """Who is signed in on this browser: the person, or ``null`` and why (a page's first
        question is not a refusal, so it is answered, not refused)."""
        value = request.cookies.get(COOKIE)
        if not value:
            return JSONResponse({"person": None, "reason": "not signed in"}, headers=HEADERS)
        try:
            identity = self.identity_of(value, request.headers.get(KEY_HEADER, ""))  # an end is recorded here
        except ApiError as over:
            return JSONResponse({"person": None, "reason": str(over)}, headers=HEADERS)
        return JSONResponse({"person": identity.removeprefix("token:"), "idle_timeout": self.sessions.idle_timeout()},
                            headers=HEADERS)

    async def sign_out(self, request: Request, identity: str) -> Response:
        body = await read_checked(request, "ConsoleSignOut", self.app)
        value = request.cookies.get(COOKIE, "")
        session = self.sessions.end(value)
        if session is not None:
            self._append_end(session, body.get("reason", "signed out"))
        response = JSONResponse({"ended": session is not None}, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def sweep(self) -> None:
        """Record the end of every session idle past the timeout, and of any whose end could not
        be recorded before (called periodically). LedgerError leaves the rest for the next sweep."""
        with self._ending:
            self._ends += [(session, "idle") for session in self.sessions.sweep()]
        self._record_ends()

    def _append_end(self, session: Session, why: str) -> None:
        """Record a session's end now, or, while the ledger cannot take it, at a later sweep:
        the session is over either way, and its end is never lost."""
        with self._ending:
            self._ends.append((session, why))
        with contextlib.suppress(LedgerError):  # kept: the next sweep records it
            self._record_ends()

    def _record_ends(self) -> None:
        with self._ending:
            while self._ends:
                session, why = self._ends[0]
                with actor.acting({"token": session.person}):
                    self.app.writer.append(END, {"session": session.ident, "person": session.person,
                                                 "reason": why})
                self._ends.pop(0)

    # -- what the page shows -----------------------------------------------------------------

    async def models(self, request: Request, identity: str) -> Response:
        trusted = {k.key_id: k.name for k in TrustStore.load(self.app.home).keys()}  # noqa: SIM118 - a method
        imports = {r.record.data.get("manifest"): r.record.data.get("signers", [])
                   for r in records_backward(self.app.home.ledger, ["model.import"])}
        out = []
        for stored in self.app.models():
            templates = stored.manifest.chat_templates
            out.append({"name": stored.name, "kind": "chat" if templates else "completion",
                        "manifest": stored.digest, "size": sum(f.size for f in stored.manifest.files),
                        "signers": [{"key_id": k, "name": trusted.get(k)} for k in imports.get(stored.digest, [])],
                        "template": "pinned" if templates else None})
        return JSONResponse({"models": out}, headers=HEADERS)

    async def receipt(self, request: Request, identity: str) -> Response:
        ident = request.path_params["inference"]
        found = await asyncio.to_thread(self._records_of, ident)
        begin, end = found.get("inference.begin"), found.get("inference.end")
        person = identity.removeprefix("token:")
        if begin is None or actor.person(begin.data) != person:
            raise ApiError(404, f"no inference {ident} of yours is recorded")
        if end is None:  # the page asks again shortly: pending, not an error
            return JSONResponse({"inference": ident, "pending": True,
                                 "message": f"inference {ident} has begun, and its end is not yet recorded"},
                                status_code=202, headers=HEADERS)
        data = begin.data
        content = "sealed" if "sealed" in data else "plaintext" if ("prompt" in data or "messages" in data) else "hash"
        return JSONResponse({
            "inference": ident, "model": data.get("model"), "manifest": data.get("manifest"), "person": person,
            "kind": data.get("kind"), "content": content,
            "begin": {"seq": begin.seq, "ts": begin.ts, "hash": begin.hash, "airgap": data.get("airgap")},
            "end": {"seq": end.seq, "ts": end.ts, "hash": end.hash, "airgap": end.data.get("airgap"),
                    "done_reason": end.data.get("done_reason"), "prompt_tokens": end.data.get("prompt_tokens"),
                    "completion_tokens": end.data.get("completion_tokens")},
            "records": [begin.to_json(), end.to_json()], "proof": self._proof(ident, end.seq, begin.seq)},
            headers=HEADERS)

    async def proof(self, request: Request, identity: str) -> Response:
        """The tlog-proof (C2SP) that one of the caller's inference records is in the newest signed
        tree head holding it: a receipt anyone with the appliance's verifier key checks offline
        (`anticloud verify proof`). Recorded as ``ledger.proof``, like `anticloud ledger prove`."""
        ident, which = request.path_params["inference"], request.query_params.get("record", "begin")
        found = await asyncio.to_thread(self._records_of, ident)
        record = found.get(f"inference.{which}")
        begin = found.get("inference.begin")
        if which not in ("begin", "end") or record is None or begin is None \
                or actor.person(begin.data) != identity.removeprefix("token:"):
            raise ApiError(404, f"no {which} record of an inference {ident} of yours is recorded")
        try:
            proof = await asyncio.to_thread(prove_record, self.app.home.ledger, record.seq)
        except ProofRequestError:
            raise ApiError(404, f"no signed checkpoint holds record {record.seq} yet; ask the operator for one "
                                "(anticloud ledger checkpoint)") from None
        body = proof.encode()
        self.app.writer.append(PROOF_KIND, {"proof": "inclusion", "seq": record.seq, "size": proof.tree_head().size,
                                            "out": f"console:{ident}.{which}", "sha3_256": sha3_tag(body)})
        return Response(body, media_type="text/plain; charset=utf-8", headers={
            **HEADERS, "Content-Disposition": f'attachment; filename="inference-{ident}-{which}.tlog-proof"'})

    def _records_of(self, ident: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for located in records_backward(self.app.home.ledger, ["inference.begin", "inference.end"]):
            if located.record.data.get("id") == ident:
                found.setdefault(located.record.kind, located.record)
                if len(found) == 2:
                    break
        return found

    def _proof(self, ident: str, end_seq: int, begin_seq: int) -> dict[str, Any] | None:
        """Where a checkpoint after the inference signs a tree holding it: how to get its receipt."""
        newest = next(records_backward(self.app.home.ledger, ["ledger.checkpoint"]), None)
        if newest is None or newest.record.seq <= end_seq:
            return None
        return {"checkpoint_seq": newest.record.seq, "command": f"anticloud ledger prove {begin_seq}",
                "url": f"/console/proof/{ident}?record=begin"}

    async def status(self, request: Request, identity: str) -> Response:
        status = self.app.status()
        ledger = self.app.home.ledger
        async with self._verifying:  # one verification at a time, on one core, at most once a minute
            if self._clock() - self._verified_at >= VERIFY_EVERY:
                verdict = await asyncio.to_thread(verify_file, ledger, jobs=1)
                self._verdict = {"verdict": verdict.status, "records": verdict.records,
                                 "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                self._verified_at = self._clock()
        last = last_record(ledger)
        return JSONResponse({
            "airgap": {"state": status["airgap"], "evidence": status["evidence"]}, "engine": status["engine"],
            "namespace": status["namespace"], "loaded": status["loaded"],
            "ledger": {**status["ledger"], "ts": last.record.ts if last else None, "verified": self._verdict}},
            headers=HEADERS)

