"""`anticloud audit enroll`: give an auditor the secret that forward-secure seals are checked with."""

from __future__ import annotations

from pathlib import Path

import click

from anticloud.cli import pass_home
from anticloud.home import Home
from anticloud.sealing import enroll, sealer_for
from ledger import LedgerWriter


@click.group("audit")
def audit_group() -> None:
    """What auditors take away from the appliance."""


@audit_group.command("enroll")
@click.option("--auditor", required=True, help="Who takes the secret away (recorded).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the secret (0600): removable media, outside the home.")
@click.option("--abandon", is_flag=True,
              help="The sealing state was lost: end the open chain unsealed (recorded) and enroll anew.")
@pass_home
def enroll_auditor(home: Home, auditor: str, out: Path, abandon: bool) -> None:
    """Start forward-secure sealing for AUDITOR, closing any sealing chain before it.

    \b
    The secret is written to --out once and kept nowhere else: the appliance seals its first
    epoch at once and from then on holds only the key of the epoch in progress, which it
    evolves one way. Keep the file off the appliance; verify with
    `anticloud verify ledger --seal-key FILE` (or tools/verify_ledger.py --seal-key FILE).
    """
    with LedgerWriter.open(home.ledger, sealer_for(home, always=True, abandon=abandon)) as writer:
        record = enroll(home, writer, auditor, out)
    click.echo(f"enrolled {auditor}: sealing from seq {record.seq}, fingerprint {record.data['fingerprint']}")
    click.echo(f"  secret  {out}  (0600; take it away, and keep it off this machine)")


# `audit hash` imports what it needs itself, so the module's head stays the other commands'.
@audit_group.command("hash")
@click.argument("text", required=False)
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the candidate from FILE (bytes exactly as stored) instead of TEXT or standard input.")
@click.option("--kind", type=click.Choice(["prompt", "output", "input"]), default="prompt", show_default=True,
              help="What the hash is compared with: inference.begin's prompt_sha3_256, inference.end's "
                   "output_sha3_256, or one of an embedding's input_sha3_256.")
@click.option("--messages", is_flag=True,
              help="The candidate is a chat's messages as JSON: a list, or a request body with \"messages\".")
@click.option("--system", help="Ollama's \"system\" field sent with a /api/generate prompt.")
@click.option("--expect", metavar="HASH", help="The recorded hash: say whether the candidate matches (exit 1 if not).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def hash_content(text: str | None, path: Path | None, kind: str, messages: bool, system: str | None,
                 expect: str | None, as_json: bool) -> None:
    """Hash a candidate prompt, output or input exactly as the appliance recorded its hash.

    \b
    The candidate is TEXT, --file, or standard input, hashed byte for byte: `echo` adds a
    newline the prompt may not have had (use printf, or --file). A chat's prompt is hashed
    over its messages (--messages), as docs/records.md describes. Needs no appliance home:
    an auditor checks "was this the prompt?" on a copy of the ledger.
    """
    import json
    import sys

    from anticloud.cli import EXIT_FAILED, CliInputError
    from anticloud.content import KINDS, hash_candidate
    from anticloud.errors import ContentError

    if text is not None and path is not None:
        raise CliInputError("give the candidate as TEXT or --file, not both")
    if text is not None:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the shell passed
    elif path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:  # unreadable input, as every command says it: one line, exit 2
            raise CliInputError(f"cannot read {path}: {exc.strerror}") from None
    else:
        raw = sys.stdin.buffer.read()
    try:
        computed = hash_candidate(raw, next(k for k in KINDS if k == kind), messages, system, expect)
    except ContentError as exc:
        raise CliInputError(str(exc)) from None
    click.echo(json.dumps(computed.to_json()) if as_json else computed.sha3_256)
    if computed.matches is not None and not as_json:
        click.echo(f"{'matches' if computed.matches else 'does NOT match'} {expect}", err=not computed.matches)
    if computed.matches is False:
        raise click.exceptions.Exit(EXIT_FAILED)
