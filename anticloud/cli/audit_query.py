"""`anticloud audit records|people|models|refusals|airgap|config|lifecycle|keys`: questions answered
from a ledger, on the appliance or on a copy of its ledger anywhere (``--ledger FILE``).

Every answer comes with the verifier's verdict on the file it was computed from: first in the
table, in the ``verdict`` member of ``--json``, on standard error beside ``--csv``. The answer
covers only records that verified: on a broken chain it stops before the first bad record, and
says so before and after the table. The exit code is the verdict's, as `anticloud verify ledger`:
0 intact, 1 broken (the answer is partial), 3 torn tail (the answer covers every complete record),
2 bad usage or an unreadable file.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from anticloud.audit import (
    OUTCOMES,
    SUMMARIES,
    Facts,
    Filter,
    Result,
    Summary,
    answer,
    bounds,
    cell,
    coverage_for,
    matching,
    parse_time,
    wanted_kinds,
)
from anticloud.cli.verify import render
from anticloud.errors import NotInitializedError
from anticloud.home import Home, check_home
from ledger import Record, load_checkpoint, load_public_key, verify_file

EXIT_HELP = """\b
Exit codes: 0 the ledger is intact; 1 it is broken (the answer stops before the first bad
record); 3 it ends in a torn line (the answer covers every complete record); 2 bad usage
or an unreadable file."""

SUMMARY_HELP = {
    "people": "Requests, outcomes, refusals and tokens per person per day (UTC).",
    "models": "Requests, outcomes, refusals and tokens per model per day (UTC).",
    "refusals": "Refusals grouped by reason: how many, to whom, first and last.",
    "airgap": "The air gap's timeline: breaches, restorations, unobserved spans, refused starts.",
    "config": "Configuration history: who changed which setting, when, old -> new.",
    "lifecycle": "Models imported, loaded, unloaded, refused, rejected and removed.",
    "keys": "Publisher keys trusted and revoked, tokens created and revoked, auditors enrolled.",
}


def query_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every question shares: where the ledger is, how to verify it, the filter, the format."""
    options = [
        click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="A ledger file (a copy, anywhere); default: the home's ledger."),
        click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path),
                     help="The appliance.pub you hold: the genesis must name it."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
                     help="A checkpoint you hold: detects truncation and rewrites up to it."),
        click.option("--since", help="From this time: 2025-03-01, 2025-03-01T09:00:00Z, or back from now: 7d, 24h."),
        click.option("--until", help="Before this time (a date includes its whole day)."),
        click.option("--person", "persons", multiple=True,
                     help="A token's person, a user name, or uid:N (repeatable)."),
        click.option("--model", "models", multiple=True, help="A model name (repeatable)."),
        click.option("--kind", "kinds", multiple=True,
                     help="A record kind, or a prefix such as model.* (repeatable)."),
        click.option("--outcome", "outcomes", multiple=True, type=click.Choice(OUTCOMES),
                     help="How it ended (repeatable)."),
        click.option("--text", help="Records whose kind or data contain this text (case-insensitive)."),
        click.option("--json", "as_json", is_flag=True, help="The answer and the verdict as JSON."),
        click.option("--csv", "as_csv", is_flag=True, help="The rows as CSV; the verdict goes to standard error."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class Question:
    """The parts of a question the options name, resolved: the file, its verdict, the filter; and
    the ``summaries`` asked, answered in the verifier's pass (``answers``, in the same order)."""

    def __init__(self, home: Home, ledger_path: Path | None, pubkey: Path | None, checkpoint: Path | None,
                 since: str | None, until: str | None, persons: Sequence[str], models: Sequence[str],
                 kinds: Sequence[str], outcomes: Sequence[str], text: str | None, as_json: bool,
                 as_csv: bool, summaries: Sequence[Summary] = ()) -> None:
        if as_json and as_csv:
            raise click.UsageError("--json and --csv are alternatives: give one")
        now = datetime.now(UTC)
        self.query = Filter.build(parse_time(since, now) if since else None,
                                  parse_time(until, now, until=True) if until else None,
                                  persons, models, kinds, outcomes, text)
        if ledger_path is None:
            check_home(home)
            if not home.ledger.exists():
                raise NotInitializedError(f"{home.root} is not initialised; give --ledger FILE or run `anticloud init`")
        self.path = ledger_path or home.ledger
        self.format = "json" if as_json else "csv" if as_csv else "table"
        pinned = load_checkpoint(checkpoint) if checkpoint else None
        key = load_public_key(pubkey) if pubkey else None
        self.answers: list[Summary] = []
        if summaries:
            self.verdict, self.answers, self.coverage = answer(self.path, self.query, summaries, pinned, key)
            self.bounds = bounds(self.verdict)
        else:
            self.verdict = verify_file(self.path, checkpoint=pinned, public_key=key)
            self.bounds = bounds(self.verdict)
            self.coverage = coverage_for(self.verdict, self.bounds)

    def header(self) -> list[str]:
        """The verdict for people, and what the answer covers."""
        v = self.verdict
        if v.status == "broken":
            return [*render(v), *self.warning()]
        covered = "" if v.head_seq is None else f" seq 0..{v.head_seq}"
        return [f"{render(v)[0]}  ({v.records} records{covered}, {v.first_ts} .. {v.last_ts}; signatures verified)"]

    def warning(self) -> list[str]:
        if self.verdict.status != "broken":
            return []
        last = self.coverage.last_seq
        upto = "no record" if last is None else f"only records 0..{last}"
        return [f"WARNING: ANSWER FROM A LEDGER THAT DOES NOT VERIFY: it covers {upto}, which verified; "
                f"nothing from seq {self.coverage.records} on is counted."]

    def document(self, covers: bool = True) -> dict[str, Any]:
        """The verdict and the question; ``covers`` once the answer is known."""
        doc: dict[str, Any] = {"verdict": self.verdict.to_json(), "filter": self.query.to_json()}
        if covers:
            doc["covers"] = self.coverage.to_json()
        if self.verdict.status == "broken":
            doc["warning"] = self.warning()[0]
        return doc

    def finish(self) -> None:
        raise SystemExit(self.verdict.exit_code)


def _question(command: Callable[..., Any], summaries: Callable[[], list[Summary]] = list) -> Callable[..., Any]:
    """Resolve the shared options into a Question for ``command``, answering ``summaries()``."""
    @functools.wraps(command)
    def run(home: Home, ledger_path: Path | None, pubkey: Path | None, checkpoint: Path | None, since: str | None,
            until: str | None, persons: tuple[str, ...], models: tuple[str, ...], kinds: tuple[str, ...],
            outcomes: tuple[str, ...], text: str | None, as_json: bool, as_csv: bool, **rest: Any) -> None:
        question = Question(home, ledger_path, pubkey, checkpoint, since, until, persons, models, kinds, outcomes,
                            text, as_json, as_csv, summaries())
        command(question, **rest)
        question.finish()

    return click.pass_obj(run)


def summary_command(name: str) -> click.Command:
    """`anticloud audit NAME`: one summary over the matching records."""
    def respond(question: Question) -> None:
        emit(question, question.answers[0].result())

    respond.__doc__ = f"{SUMMARY_HELP[name]}\n\n{EXIT_HELP}"
    asked = _question(respond, lambda: [SUMMARIES[name]()])
    return click.command(name, help=respond.__doc__)(query_options(asked))


def emit(question: Question, result: Result) -> None:
    if question.format == "json":
        click.echo(json.dumps({**question.document(), "result": result.to_json()}, indent=2, ensure_ascii=False))
        return
    columns, rows = result.table()
    if question.format == "csv":
        _verdict_to_stderr(question)
        write_csv(columns, rows)
        return
    click.echo("\n".join(question.header()))
    click.echo()
    click.echo("\n".join(table(columns, rows)) if rows else "(nothing matches)")
    click.echo(f"\n{question.coverage.matched} matching record(s) of {question.coverage.records}")
    for line in question.warning():
        click.echo(line)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], max_width: int = 60) -> list[str]:
    """Aligned columns, each cell cut at ``max_width`` characters."""
    cells = [[_cut(cell(value), max_width) for value in row] for row in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return lines


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if value is None else cell(value) for value in row])


def _verdict_to_stderr(question: Question) -> None:
    for line in question.header():
        click.echo(line, err=True)


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


# -- the records themselves ----------------------------------------------------------------------------

RECORD_COLUMNS = ("seq", "ts", "kind", "person", "model", "outcome", "data")


@click.option("--limit", type=click.IntRange(min=1), help="At most this many records (the oldest first).")
def records(question: Question, limit: int | None) -> None:
    """The records that match, oldest first, with who, which model and how it ended.

    Streams: any number of records is listed in bounded memory.
    """
    query = question.query
    found: Iterable[tuple[Record, Facts]] = matching(question.path, query, wanted_kinds(query, []),
                                                     question.bounds, question.coverage)
    if limit is not None:
        found = _first(found, limit)
    if question.format == "json":
        head = json.dumps(question.document(covers=False), indent=2, ensure_ascii=False)[:-2]  # reopen the object
        sys.stdout.write(head + ',\n  "records": [')
        for at, (record, facts) in enumerate(found):
            line = json.dumps(_record_json(record, facts), ensure_ascii=False)
            sys.stdout.write(("," if at else "") + "\n    " + line)
        sys.stdout.write('\n  ],\n  "covers": ' + json.dumps(question.coverage.to_json()) + "\n}\n")
        return
    rows = ((r.seq, r.ts, r.kind, f.person, f.model, f.outcome, r.data) for r, f in found)
    if question.format == "csv":
        _verdict_to_stderr(question)
        write_csv(RECORD_COLUMNS, rows)
        return
    click.echo("\n".join(question.header()))
    click.echo()
    click.echo(_record_line(RECORD_COLUMNS))
    for row in rows:
        click.echo(_record_line([cell(value) for value in row]))
    click.echo(f"\n{question.coverage.matched} matching record(s) of {question.coverage.records}")
    for line in question.warning():
        click.echo(line)


RECORD_WIDTHS = (7, 27, 22, 16, 16, 11, 90)


def _record_line(cells: Sequence[str]) -> str:
    return "  ".join(_cut(c, w).ljust(w) for c, w in zip(cells, RECORD_WIDTHS, strict=True)).rstrip()


def _first(found: Iterable[tuple[Record, Facts]], limit: int) -> Iterable[tuple[Record, Facts]]:
    for at, item in enumerate(found):
        yield item
        if at + 1 >= limit:
            return


def _record_json(record: Record, facts: Facts) -> dict[str, Any]:
    return {"seq": record.seq, "ts": record.ts, "kind": record.kind, "hash": record.hash, "data": record.data,
            "person": facts.person, "model": facts.model, "outcome": facts.outcome}


def register(group: click.Group) -> None:
    """Add the questions to the ``audit`` group."""
    records.__doc__ = f"{records.__doc__}\n{EXIT_HELP}"
    group.add_command(click.command("records", help=records.__doc__)(query_options(_question(records))))
    for name in SUMMARIES:
        group.add_command(summary_command(name))
