"""schemathesis over /openapi.json: whatever it sends, the API answers without a 5xx.

It runs in-process against the real application with the fake engine, so it can send
thousands of requests in seconds; the same routes are exercised with the real model by the
client tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from anticloud.api.app import create_app
from anticloud.api.identity import _WithPeer
from anticloud.config import set_value
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriter, verify_file
from tests.fake_engine import FakeModel  # registers the "fake" engine
from tests.test_api import ISOLATED


@pytest.fixture
def api_schema(imported_home: Callable[..., Home]) -> Iterator[Any]:
    home = imported_home("tiny")
    FakeModel.gate = None
    with LedgerWriter.open(home.ledger) as writer:
        for key, value in (("engine.name", "fake"), ("inference.default_model", "tiny"),
                           ("models.tiny.n_ctx", "64")):
            set_value(home, writer, key, value)
        app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
        # In process there is no socket: present the caller as a unix-socket peer, as uvicorn would.
        yield schemathesis.openapi.from_asgi("/openapi.json", _WithPeer(create_app(app), 1000))
    assert verify_file(home.ledger).status == "intact"


def test_no_request_makes_a_server_error(api_schema: Any) -> None:
    # schemathesis's pytest plugin does not run under pytest 9; its strategies work with plain hypothesis.
    from hypothesis import given
    from hypothesis import strategies as st

    operations = [result.ok() for result in api_schema.get_all_operations()]
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert names >= {"POST /api/generate", "POST /v1/chat/completions"}
    statuses: list[int] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def call(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations), label="operation")
        case = data.draw(operation.as_strategy(), label="case")
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"

    call()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses), "both accepted and refused requests were tried"
