"""`anticloud ledger prove|witness-request|add-cosignature`: proofs out of the ledger, cosignatures in.

Each proof handed out is recorded (``ledger.proof``): reading evidence out of the appliance is
itself an auditable act. A cosignature is verified with the witness's key before it is recorded
(``ledger.cosigned``); see docs/witness.md for the whole round trip.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import click

from anticloud.cli import CliInputError, open_ledger, pass_home, read_vkey
from anticloud.fsutil import atomic_write
from anticloud.home import Home
from ledger import (
    COSIGNED_KIND,
    EMPTY_ROOT,
    NoteError,
    SignedHead,
    TreeHead,
    Vkey,
    open_note,
    prove_extension,
    prove_record,
    records_backward,
    sha3_tag,
    signed_heads,
    tree_head_of,
)

PROOF_KIND = "ledger.proof"
_OUT = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                    help="The file to write.")


def register(group: click.Group) -> None:
    for command in (prove, witness_request, add_cosignature):
        group.add_command(command)


@click.command("prove")
@click.argument("seq", type=click.IntRange(min=0), required=False)
@click.option("--from", "old", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Instead: prove that the ledger extends this checkpoint (a tlog checkpoint you hold).")
@_OUT
@pass_home
def prove(home: Home, seq: int | None, old: Path | None, out: Path) -> None:
    """Write a receipt for record SEQ (a C2SP tlog-proof carrying the record), or with --from a
    consistency proof from a checkpoint you hold to the latest one. Recorded as ledger.proof.

    The receipt reveals that one record and nothing else of the ledger; check it with
    `anticloud verify proof` or tools/verify_ledger.py --proof, holding the appliance's verifier key."""
    if (seq is None) == (old is None):
        raise click.UsageError("give SEQ for a receipt, or --from CHECKPOINT for a consistency proof")
    if seq is not None:
        proof = prove_record(home.ledger, seq)
        body, what = proof.encode(), {"proof": "inclusion", "seq": seq}
        size = proof.tree_head().size
    else:
        assert old is not None
        head = _tree_head(old)
        request = prove_extension(home.ledger, head)
        body, what = request.encode(), {"proof": "consistency", "old_size": head.size}
        size = tree_head_of(request.checkpoint).size
    _write_recorded(home, out, body, {**what, "size": size})
    click.echo(f"{what['proof']} proof against the signed tree of size {size} written to {out}")


@click.command("witness-request")
@click.option("--for", "witness", required=True, metavar="VKEY",
              help="The witness's verifier key (or a file holding it), as `anticloud witness init` printed it.")
@_OUT
@pass_home
def witness_request(home: Home, witness: str, out: Path) -> None:
    """Write an add-checkpoint request (C2SP tlog-witness) for a witness: the latest signed tree
    head and the consistency proof from the last one that witness cosigned. Recorded as ledger.proof."""
    vkey = read_vkey(witness, witness=True)
    latest = _latest(home)
    old = _last_cosigned(home, vkey, latest.head.origin) or TreeHead(latest.head.origin, 0, EMPTY_ROOT)
    request = prove_extension(home.ledger, old, latest)
    _write_recorded(home, out, request.encode(), {"proof": "witness-request", "witness": vkey.name,
                                                  "old_size": old.size, "size": latest.head.size})
    click.echo(f"request for {vkey.name}: from size {old.size} to {latest.head.size}, written to {out}")


@click.command("add-cosignature")
@click.argument("cosignature", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--witness", required=True, metavar="VKEY", help="The witness's verifier key (or a file holding it).")
@pass_home
def add_cosignature(home: Home, cosignature: Path, witness: str) -> None:
    """Verify a witness's COSIGNATURE (the file `anticloud witness cosign` wrote) on one of this
    ledger's signed tree heads, and record it (ledger.cosigned). A cosignature that verifies on
    none of them is refused."""
    vkey = read_vkey(witness, witness=True)
    lines = [line + "\n" for line in cosignature.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or len(lines) > 16:
        raise CliInputError(f"{cosignature}: not a cosignature (one to sixteen signature lines)")
    for signed in _recent_heads(home):
        verdict = open_note(signed.note + "".join(lines), [vkey])
        mine = [s for s in verdict.verified if s.name == vkey.name] if verdict.ok else []
        if mine:
            line = next(line for line in lines if line.startswith(f"\u2014 {vkey.name} "))
            with open_ledger(home) as writer:
                writer.append(COSIGNED_KIND, {
                    "witness": vkey.name, "vkey": vkey.encode(), "size": signed.head.size,
                    "root": _b64(signed.head.root), "checkpoint_seq": signed.record.record.seq,
                    "time": mine[0].timestamp, "cosignature": line})
            click.echo(f"{vkey.name} cosigned the tree of size {signed.head.size}; recorded")
            return
    raise CliInputError(f"{cosignature}: no signature by {vkey.name} verifies on any of this ledger's recent "
                        "signed tree heads")


def _recent_heads(home: Home, limit: int = 256) -> list[SignedHead]:
    heads = []
    for signed in signed_heads(home.ledger):
        heads.append(signed)
        if len(heads) == limit:
            break
    return heads


def _latest(home: Home) -> SignedHead:
    latest = next(signed_heads(home.ledger), None)
    if latest is None:
        raise CliInputError("the ledger has no signed tree head yet: run `anticloud ledger checkpoint`")
    return latest


def _last_cosigned(home: Home, vkey: Vkey, origin: str) -> TreeHead | None:
    """The largest tree head the ledger records ``vkey`` as having cosigned."""
    best = None
    for located in records_backward(home.ledger, [COSIGNED_KIND]):
        data = located.record.data
        if data.get("vkey") == vkey.encode() and (best is None or data["size"] > best.size):
            best = TreeHead(origin, data["size"], base64.b64decode(data["root"]))
    return best


def _tree_head(path: Path) -> TreeHead:
    try:
        return tree_head_of(path.read_text())
    except (NoteError, UnicodeDecodeError) as exc:
        raise CliInputError(f"{path}: not a tlog checkpoint: {exc}") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _write_recorded(home: Home, out: Path, body: bytes, what: dict[str, Any]) -> None:
    """Record the proof, then write it: no proof leaves without its record."""
    with open_ledger(home) as writer:
        writer.append(PROOF_KIND, {**what, "out": out.name, "sha3_256": sha3_tag(body)})
    atomic_write(out, body)
