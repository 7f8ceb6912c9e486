"""A realistic ledger for the audit tests: four days of an appliance's life, written by the appliance.

The operator works through the CLI (tokens, configuration, acceptance); people ask the fake
engine over the real HTTP server on its unix socket with their own bearer tokens; the air gap
breaks and is restored; an answer is interrupted; the configuration drifts; a crash leaves a torn
tail that the next writer recovers. Only the clock is the test's: each record's ``ts`` comes from
`Days`, so that the questions per day have several days to answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from anticloud.cli import cli
from anticloud.engines import Params
from anticloud.home import Home
from anticloud.runtime import Appliance
from ledger import LedgerWriter
from ledger.record import utc_timestamp
from tests.fake_engine import FakeModel
from tests.test_api import CONNECTED, ISOLATED, Served, running

PEOPLE = ("alice", "bob", "carol")


class Days:
    """The ledger's clock: it starts at the real now (the records before it were written at the real
    time), a second passes per record, and `next_day` jumps to 08:00 of the next day."""

    def __init__(self) -> None:
        self.now, self.lock = datetime.now(UTC), threading.Lock()
        self.days = [self.now.strftime("%Y-%m-%d")]

    def __call__(self, now: datetime | None = None) -> str:
        with self.lock:
            self.now += timedelta(seconds=1)
            return utc_timestamp(self.now)

    def next_day(self) -> None:
        with self.lock:
            self.now = (self.now + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
            self.days.append(self.now.strftime("%Y-%m-%d"))


def operator(home: Home, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    assert result.exit_code == 0, (args, result.output)
    return result.output


def ask(served: Served, token: str, model: str, prompt: str, expect: int = 200) -> None:
    with served.client(token) as client:
        reply = client.post("/api/generate", json={"model": model, "prompt": prompt, "stream": False})
    assert reply.status_code == expect, reply.text


def interrupted(app: Appliance, person: str) -> None:
    """An answer whose client went away after its first word, through the engine's own path."""
    words = iter(range(100))
    for _ in app.infer("tiny", "a story that is cut short", Params(), f"token:{person}",
                       cancelled=lambda: next(words) > 0):
        pass


def build(monkeypatch: pytest.MonkeyPatch, home: Home, sock: Path) -> list[str]:
    """Write the days into ``home`` (imported models tiny and other: the first day); returns the days (UTC)."""
    days = Days()
    monkeypatch.setattr("ledger.store.utc_timestamp", days)
    monkeypatch.setattr("ledger.record.utc_timestamp", days)  # what a recovery's record is stamped with
    FakeModel.loads, FakeModel.unloads, FakeModel.generations, FakeModel.gate = [], [], 0, None
    for key, value in (("engine.name", "fake"), ("inference.default_model", "tiny"),
                       ("api.tokens_on_unix_socket", "true")):
        operator(home, "config", "set", key, value)
    tokens = {name: operator(home, "tokens", "create", name).split()[0] for name in PEOPLE}
    days.next_day()
    with LedgerWriter.open(home.ledger) as writer, _serving(home, writer, sock) as served:
        for prompt in ("one two three", "four five", "six"):
            ask(served, tokens["alice"], "tiny", prompt)
        ask(served, tokens["bob"], "other", "seven eight")
        ask(served, tokens["bob"], "other", "nine")
        ask(served, tokens["carol"], "tiny", "ten eleven twelve thirteen")
        ask(served, "not-a-token", "tiny", "who am I", expect=401)
        days.next_day()
        ask(served, tokens["alice"], "other", "fourteen")
        ask(served, tokens["alice"], "tiny", "fifteen sixteen")
        served.app.observe(CONNECTED)
        ask(served, tokens["carol"], "tiny", "during the breach", expect=503)
        served.app.observe(ISOLATED)
        ask(served, tokens["carol"], "tiny", "after the breach")
        interrupted(served.app, "bob")
    days.next_day()
    home.config.write_text(home.config.read_text() + '\n[airgap]\nmode = "warn"\n')  # an edit around anticloud
    with LedgerWriter.open(home.ledger) as writer, pytest.raises(Exception, match="outside anticloud"):
        Appliance.start(home, writer, namespace=True, state=ISOLATED)
    operator(home, "config", "accept")
    operator(home, "tokens", "revoke", "bob")
    with open(home.ledger, "ab") as ledger:
        ledger.write(b'{"seq": 99999, "kind": "inference.beg')  # a crash in the middle of an append
    days.next_day()
    with LedgerWriter.open(home.ledger) as writer, _serving(home, writer, sock) as served:  # recovers the tail
        ask(served, tokens["alice"], "tiny", "a new day")
        ask(served, tokens["carol"], "other", "and another question")
    return days.days


@contextlib.contextmanager
def _serving(home: Home, writer: LedgerWriter, sock: Path) -> Iterator[Served]:
    """The engine started and serving on ``sock``, then stopped as `anticloud stop` stops it."""
    app = Appliance.start(home, writer, namespace=True, state=ISOLATED)
    try:
        with running(app, sock):
            yield Served(home, app, sock)
    finally:
        app.stop("stopped by the operator")
