"""`anticloud content`: the operator's content key, reading sealed content, legal holds and erasure."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from anticloud import actor
from anticloud.cli import open_ledger, pass_home
from anticloud.cli.confirm import YES_HELP, confirm
from anticloud.errors import ContentSealError
from anticloud.home import Home
from anticloud.vault.erasure import Eraser, holds_in_force, parse_day, place_hold, release_hold, scope_of
from anticloud.vault.keyring import Keyring, PassphraseNeeded
from anticloud.vault.reading import SEALING_KINDS, ContentReader, Erasures, Opened
from anticloud.vault.store import ContentStore
from ledger import Record, record_with_seq, records_forward

PASSPHRASE_ENV = "ANTICLOUD_CONTENT_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret


@click.group("content")
def content_group() -> None:
    """Sealed prompts and outputs (inference.record_content = "sealed"): read, hold, erase."""


def check_new_key(home: Home, key_file: Path | None) -> None:
    """Refuse, before anything is made, a content key that could not be written where asked."""
    if Keyring(home.keyring).exists():
        raise ContentSealError(f"{home.keyring / 'operator.pub'} exists: this home already has a content key")
    if key_file is not None and (key_file.exists() or not key_file.parent.is_dir()):
        raise ContentSealError(f"{key_file}: give a new file in an existing directory for the content key")


def ask_passphrase(passphrase: bool) -> bytes | None:
    """The passphrase for a new content key, asked for before anything is made (or None)."""
    return _passphrase(confirm=True) if passphrase else None


def create_key(home: Home, key_file: Path | None, secret: bytes | None) -> str:
    """Make the home's content key; returns where its private half went, for the operator."""
    Keyring(home.keyring).create(key_file, secret)
    where = key_file or home.keyring / "operator.key"
    if key_file is None and secret is None:
        return (f"{where}, unprotected: move it to separate media, or protect it with a passphrase "
                "(openssl pkcs8 -topk8), before this home holds anything sensitive")
    return f"{where}" + (" (under your passphrase)" if secret else "  (keep it on separate media)")


def _passphrase(confirm: bool = False) -> bytes:
    return (os.environ.get(PASSPHRASE_ENV) or click.prompt("content key passphrase", hide_input=True,
                                                           confirmation_prompt=confirm)).encode()


@content_group.command("init")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the private content key to this new file (separate media), not into the home.")
@click.option("--passphrase", is_flag=True, help=f"Encrypt the private key (prompted, or ${PASSPHRASE_ENV}).")
@pass_home
def init(home: Home, key_file: Path | None, passphrase: bool) -> None:
    """Make the content key pair that sealing needs (`anticloud init` makes one for new homes)."""
    check_new_key(home, key_file)
    secret = ask_passphrase(passphrase)
    with open_ledger(home) as writer:  # the home is initialised: its record can be made
        where = create_key(home, key_file, secret)
        writer.append("content.key", key_record(home, key_file, passphrase))
    click.echo(f"content key {Keyring(home.keyring).fingerprint()}\n  private  {where}")


def key_record(home: Home, key_file: Path | None, passphrase: bool) -> dict[str, Any]:
    """``content.key``: the public key's fingerprint, and where its private half was put."""
    return {"fingerprint": Keyring(home.keyring).fingerprint(), "private": "separate file" if key_file else "home",
            "passphrase": passphrase}


def key_options(command: Any) -> Any:
    command = click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                           help="The private content key's file (default: the home's keyring).")(command)
    return command


def content_reader(home: Home, key_file: Path | None) -> ContentReader:
    """A reader of the home's sealed content, with the operator's key (from ``key_file``, or the
    keyring; a passphrase is asked for if it is encrypted)."""
    keyring = Keyring(home.keyring)
    if not keyring.exists():
        raise ContentSealError(f"{home.root} has no content key: nothing here was ever sealed")
    try:
        private = keyring.private_key(key_file, None)
    except PassphraseNeeded:
        private = keyring.private_key(key_file, _passphrase())
    genesis = record_with_seq(home.ledger, 0).record
    return ContentReader(keyring, ContentStore(home.content), str(genesis.data["ledger_id"]), private,
                         Erasures.of_ledger(home.ledger))


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text else parse_day(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@content_group.command("show")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--person", help="The records of this person (as the audit names people).")
@click.option("--since", help="From this time on (YYYY-MM-DD, or an ISO time).")
@click.option("--until", help="Before this time.")
@key_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@pass_home
def show(home: Home, seqs: tuple[int, ...], person: str | None, since: str | None, until: str | None,
         key_file: Path | None, as_json: bool) -> None:
    """Decrypt and show the sealed content of records SEQ..., or of a person or a time range.

    Every commitment is checked before anything is shown; content that was erased is named as
    erased. Exit 1 if any content failed a check (it is named, and nothing of it is shown)."""
    if not seqs and person is None and since is None and until is None:
        raise click.UsageError("name records (SEQ...), or a --person, --since or --until")
    reader = content_reader(home, key_file)
    start, end = _when(since), _when(until)
    records = [record_with_seq(home.ledger, seq).record for seq in seqs] if seqs else [
        r for r in (loc.record for loc in records_forward(home.ledger, SEALING_KINDS))
        if (person is None or actor.person(r.data) == person)
        and (start is None or _ts(r) >= start) and (end is None or _ts(r) < end)]
    failed = shown = 0
    for record in records:
        opened = reader.open_record(record)
        if not opened and seqs:
            raise ContentSealError(f"record {record.seq} ({record.kind}) holds no sealed content")
        if not opened:
            continue
        shown += 1
        failed += sum(o.state == "failed" for o in opened)
        _print(record, opened, as_json)
    if not shown and not as_json:
        click.echo("no sealed content matches")
    if failed:
        raise ContentSealError(f"{failed} sealed field(s) failed their checks (named above)")


def _ts(record: Record) -> datetime:
    return datetime.fromisoformat(record.ts.replace("Z", "+00:00"))


def _print(record: Record, opened: list[Opened], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"seq": record.seq, "kind": record.kind, "ts": record.ts,
                               "inference": record.data.get("id"), "person": actor.person(record.data),
                               "fields": [o.to_json() for o in opened]}, ensure_ascii=False))
        return
    head = (f"seq {record.seq}  {record.kind}  {record.ts}  {actor.person(record.data)}  "
            f"inference {record.data.get('id')}")
    if all(o.state == "erased" for o in opened):  # one line says it
        click.echo(f"{head}: {opened[0].reason}")
        return
    click.echo(head)
    for o in opened:
        if o.state == "open":
            text = o.value if isinstance(o.value, str) else json.dumps(o.value, ensure_ascii=False, indent=2)
            click.echo(f"  {o.field}:\n" + "\n".join(f"    {line}" for line in str(text).splitlines() or [""]))
        elif o.state == "erased":
            click.echo(f"  {o.field}: {o.reason}")
        else:
            click.echo(f"  {o.field}: FAILED: {o.reason}")


def scope_options(command: Any) -> Any:
    for option in reversed([
        click.option("--person", help="Everything sealed for this person."),
        click.option("--before", help="With --person: only what was sealed before this day (YYYY-MM-DD, UTC)."),
        click.option("--seq", type=int, help="The inference of this record (its begin or its end)."),
    ]):
        command = option(command)
    return command


def _scope(home: Home, person: str | None, before: str | None, seq: int | None) -> dict[str, Any]:
    try:
        return scope_of(person, before, seq, lambda n: record_with_seq(home.ledger, n).record)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@content_group.command("erase")
@scope_options
@click.option("--request", "request", required=True,
              help="Who asked and where it is written down (a ticket, a letter's reference); recorded.")
@click.option("--delete-ciphertext", is_flag=True, help="Also shred the content files (the keys go regardless).")
@click.option("--yes", is_flag=True, help=YES_HELP)
@pass_home
def erase(home: Home, person: str | None, before: str | None, seq: int | None, request: str,
          delete_ciphertext: bool, yes: bool) -> None:
    """Erase sealed content for good by destroying its keys: recorded first (content.erased),
    refused (and recorded) if a legal hold covers it. The records stay and still verify."""
    scope = _scope(home, person, before, seq)
    confirm(f"erase the sealed content of {_describe(scope)} for good?", yes)
    with open_ledger(home) as writer:
        done = Eraser(Keyring(home.keyring), ContentStore(home.content), home.ledger, writer).erase(
            scope, request, delete_ciphertext)
    if done is None:
        click.echo(f"nothing sealed for {_describe(scope)} is left to erase")
        return
    click.echo(f"erased {_describe(scope)}: {len(done.keys)} key group(s), {len(done.inferences)} single "
               f"key(s), {done.files_deleted} content file(s) shredded; recorded at seq {done.record_seq}")


def _describe(scope: dict[str, Any]) -> str:
    if not scope:
        return "everything (a hold whose recorded scope cannot be read)"
    if "seq" in scope:
        return f"record {scope['seq']} (inference {scope['inference']})"
    return f"{scope['person']}" + (f" before {scope['before']}" if "before" in scope else "")


@content_group.command("hold")
@scope_options
@click.option("--reason", required=True, help="Why (a case, a court order); recorded.")
@pass_home
def hold(home: Home, person: str | None, before: str | None, seq: int | None, reason: str) -> None:
    """Put a legal hold on a scope: no erasure, by hand or by retention, touches it until released."""
    scope = _scope(home, person, before, seq)
    with open_ledger(home) as writer:
        ident, record = place_hold(writer, scope, reason)
    click.echo(f"hold {ident} on {_describe(scope)}, recorded at seq {record.seq}")


@content_group.command("release")
@click.argument("hold_id")
@click.option("--reason", required=True, help="Why the hold ends; recorded.")
@pass_home
def release(home: Home, hold_id: str, reason: str) -> None:
    """Lift a legal hold."""
    with open_ledger(home) as writer:
        record = release_hold(writer, home.ledger, hold_id, reason)
    click.echo(f"hold {hold_id} released, recorded at seq {record.seq}")


@content_group.command("holds")
@pass_home
def holds(home: Home) -> None:
    """The legal holds in force."""
    found = holds_in_force(home.ledger)
    for ident, scope in sorted(found.items()):
        click.echo(f"{ident}  {_describe(scope)}")
    if not found:
        click.echo("no legal hold is in force")

