"""`anticloud audit package`: the records of a time range or a person, for a regulator to verify alone.

The package is one tar file (see `anticloud.evidence`); its README tells the recipient how to check
it with the standard-library verifier it carries. Making one is recorded as ``ledger.export``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path

import click

from anticloud import actor
from anticloud.audit import Filter, parse_time
from anticloud.cli import open_ledger, pass_home
from anticloud.cli.content import content_reader
from anticloud.evidence import find_verifier, produce
from anticloud.home import Home
from anticloud.identity import load_identity


@click.command("package")
@click.option("--since", help="From this time: 2025-03-01, 2025-03-01T09:00:00Z, or back from now: 7d, 24h.")
@click.option("--until", help="Before this time (a date includes its whole day).")
@click.option("--person", "persons", multiple=True, help="A token's person, a user name, or uid:N (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The package to write: a new file ending in .tar (never replaced).")
@click.option("--verifier", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The verify_ledger.py to include (default: the one beside this installation).")
@click.option("--with-content", is_flag=True,
              help="Disclose the sealed content of the records in scope (content.jsonl), with the data keys "
                   "that prove it. Default: leave it out.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --with-content: the private content key's file (default: the home's keyring).")
@pass_home
def package(home: Home, since: str | None, until: str | None, persons: tuple[str, ...], out: Path,
            verifier: Path | None, with_content: bool, key_file: Path | None) -> None:
    """Package the records of a time range and/or a person, with a signed checkpoint, for a recipient.

    \b
    The package holds the records from the first in scope to the one a signed checkpoint names
    (the nearest checkpoint after them, or a new one signed now), the genesis record, a manifest
    of what was asked and which records are in scope, the standard-library verifier and a README
    saying how to check it. Producing it is recorded in the ledger (ledger.export).

    \b
    With --with-content it also discloses what was asked and answered in the records in scope:
    for each sealed field its value, its ciphertext and its data key (which opens that one
    inference only), or that it was erased. The recipient's verifier checks each against the
    commitments in the records. If any field fails its checks, no package is made.

    \b
    Exit codes: 0 written and recorded; 1 refused (nothing matches, the ledger does not verify,
    --out exists, a sealed field fails its checks); 2 bad usage.
    """
    if not (since or until or persons):
        raise click.UsageError("say what to package: --since/--until, --person, or both")
    if key_file is not None and not with_content:
        raise click.UsageError("--key is for --with-content")
    reader = content_reader(home, key_file) if with_content else None
    now = _now()
    query = Filter.build(parse_time(since, now) if since else None,
                         parse_time(until, now, until=True) if until else None, persons)
    with open_ledger(home) as writer:
        made = produce(home.ledger, writer, functools.partial(load_identity, home), query, out,
                       verifier or find_verifier(), actor.local(), reader)
    m = made.manifest
    seg, scope, cp = m["segment"], m["in_scope"], m["checkpoint"]
    click.echo(f"wrote {made.path}: {scope['count']} record(s) in scope, seq {seg['first_seq']}..{seg['last_seq']}"
               f" ({seg['records']} records), signed by the checkpoint of seq {cp['seq']} ({cp['source']})")
    click.echo(f"  package   {made.file_digest}")
    click.echo(f"  manifest  {made.manifest_digest}  (recorded as ledger.export, seq {made.export_seq})")
    click.echo(f"  key       {m['key_id']}  (the recipient compares this with you out of band)")
    if m["content"]["included"]:
        click.echo(f"  content   {m['content']['disclosed']} sealed field(s) disclosed, {m['content']['erased']}"
                   " erased (content.jsonl; each data key in it opens its own inference only)")
    if m["content"]["records_with_text"]:
        click.echo(f"  NOTE      {m['content']['records_with_text']} record(s) hold prompt or output text"
                   " (record_content = plaintext)")


def _now() -> datetime:
    return datetime.now(UTC)


def register(group: click.Group) -> None:
    group.add_command(package)
