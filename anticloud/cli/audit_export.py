"""`anticloud audit export --format {ocsf,cef,syslog,csv} --out FILE`: the records that match, for a SIEM.

The same options and the same verified records as the questions (`audit_query`): only records
that verified are exported, the verdict is printed beside the count, and the exit code is the
verdict's. The formats and their field mappings are in docs/siem.md (`anticloud.siem`).
"""

from __future__ import annotations

import inspect
import socket
from pathlib import Path
from typing import Any

import click

from anticloud.audit import matching, wanted_kinds
from anticloud.cli.audit_query import EXIT_HELP, Question
from anticloud.cli.audit_report import check_out, report_options
from anticloud.fsutil import replacing
from anticloud.home import Home
from anticloud.siem import FORMATS, export

EXPORT_MODE = 0o600  # audit data: names, hashes, and prompts where content is recorded


@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="ocsf: OCSF 1.8.0 API Activity, JSON Lines; cef: ArcSight CEF; syslog: RFC 5424; csv: RFC 4180.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (mode 0600; replaced only once complete; never the ledger "
                   "or a file of the home).")
def export_records(home: Home, fmt: str, out: Path, ledger_path: Path | None, **question: Any) -> None:
    """Export the records that match, one event per line, in a format a SIEM reads."""
    asked = Question(home, ledger_path, as_json=False, as_csv=False, **question)
    check_out(out, asked.path, home)
    # A copy's host is unknown: only the appliance's own ledger is known to come from this machine.
    host = socket.gethostname() if ledger_path is None else None
    found = matching(asked.path, asked.query, wanted_kinds(asked.query, []), asked.bounds, asked.coverage)
    with replacing(out, EXPORT_MODE) as handle:
        count = export((record for record, _ in found), fmt, handle, host=host)
    click.echo("\n".join(asked.header()), err=True)
    click.echo(f"wrote {out}: {count} record(s) as {fmt}, of {asked.coverage.records}", err=True)
    for line in asked.warning():
        click.echo(line, err=True)
    asked.finish()


def register(group: click.Group) -> None:
    """Add ``export`` to the ``audit`` group."""
    help_text = f"{inspect.cleandoc(export_records.__doc__ or '')}\n\n{EXIT_HELP}"
    group.add_command(click.command("export", help=help_text)(report_options(click.pass_obj(export_records))))
