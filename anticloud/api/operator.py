"""The operators' routes: /api/status and /api/ledger/head.

Invariants:

* ``/api/ledger/head`` answers with the head and an Ed25519-signed checkpoint of it, which
  anyone holding appliance.pub can check later (``anticloud verify ledger --checkpoint``).
* The identity key is read once, when the application is built (`Appliance.head_signer`),
  not on every request; it is held only inside the signing function, so it is in no
  attribute, log line or repr of these routes.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from anticloud.runtime import Appliance
from ledger import SignedCheckpoint


class OperatorRoutes:
    def __init__(self, appliance: Appliance, sign_head: Callable[[], SignedCheckpoint]) -> None:
        self.app = appliance
        self._sign_head = sign_head

    async def status(self, request: Request, identity: str) -> Response:
        return JSONResponse(self.app.status())

    async def ledger_head(self, request: Request, identity: str) -> Response:
        signed = self._sign_head()
        head = signed.checkpoint
        return JSONResponse({"seq": head.seq, "hash": head.hash, "checkpoint": signed.to_json()})
