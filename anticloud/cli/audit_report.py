"""`anticloud audit report --out FILE`: every summary, the anomalies and the verdict, as one HTML page.

It asks the same questions as the query commands, with the same options, in one pass over the
file, the verifier's (`anticloud.audit.answer`), and renders their ``to_json()`` answers (`anticloud.audit.report`):
the page shows what ``anticloud audit people|models|... --json`` print, and nothing else.
Like them it works on a copy of a ledger (``--ledger FILE``) and only reads it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from anticloud import __version__
from anticloud.audit import SUMMARIES, ledger_ts
from anticloud.audit.anomalies import Anomalies
from anticloud.audit.report import render
from anticloud.cli.audit_query import EXIT_HELP, Question, query_options
from anticloud.errors import AuditQueryError
from anticloud.fsutil import replacing
from anticloud.home import Home

FORMAT_OPTIONS = ("as_json", "as_csv")


def check_out(out: Path, ledger: Path, home: Home) -> None:
    """Refuse an ``out`` that would replace the ledger being read, or any file of the appliance's home
    (its ledger, keys, tokens, configuration): an answer is taken away, and a mistyped path must not
    put it where the audit trail or a private key was. Links are followed to what they name."""
    if out.exists() and ledger.exists() and os.path.samefile(ledger, out):
        raise AuditQueryError(f"--out {out} is the ledger being read; write elsewhere")
    if home.root.is_dir() and out.parent.resolve().is_relative_to(home.root.resolve()):
        raise AuditQueryError(f"--out {out} lies in the appliance's home {home.root}; write elsewhere")


def report_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The query commands' options, but for the output format: a report is HTML."""
    probe = query_options(lambda: None)
    params = [p for p in getattr(probe, "__click_params__", []) if p.name not in FORMAT_OPTIONS]
    command.__click_params__ = [*getattr(command, "__click_params__", []), *params]  # type: ignore[attr-defined]
    return command


@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the report (an .html file; replaced if it exists, but never the "
                   "ledger or a file of the home).")
def report(home: Home, out: Path, ledger_path: Path | None, **question: Any) -> None:
    """Write one self-contained HTML report: the verdict, activity, requests per person and per model
    per day, refusals, the air gap, configuration, model, key and token changes, and the anomalies first.

    The page needs nothing but a browser: no script, font, image or network request (its
    Content-Security-Policy forbids them), and prints to PDF one section per page. Its numbers
    are those `anticloud audit ... --json` prints for the same filter, each tagged data-metric.
    """
    check_out(out, ledger_path or home.ledger, home)
    names = [*SUMMARIES, "anomalies"]
    asked = Question(home, ledger_path, as_json=False, as_csv=False,
                     summaries=[*(make() for make in SUMMARIES.values()), Anomalies()], **question)
    results = {name: s.result().to_json() for name, s in zip(names, asked.answers, strict=True)}
    doc = {**asked.document(), "results": results, "generated": ledger_ts(datetime.now(UTC)), "version": __version__}
    with replacing(out) as handle:  # never half a page
        handle.write(render(doc).encode())
    click.echo("\n".join(asked.header()))
    click.echo(f"wrote {out}: {asked.coverage.matched} record(s) summarised of {asked.coverage.records}")
    for line in asked.warning():
        click.echo(line)
    asked.finish()


def register(group: click.Group) -> None:
    """Add ``report`` to the ``audit`` group."""
    help_text = f"{inspect.cleandoc(report.__doc__ or '')}\n\n{EXIT_HELP}"
    group.add_command(click.command("report", help=help_text)(report_options(click.pass_obj(report))))
