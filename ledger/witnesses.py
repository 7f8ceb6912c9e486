"""Which witnesses cosigned which of a ledger's signed tree heads: the evidence behind k of n.

A ``ledger.cosigned`` record carries one witness's cosignature line (C2SP tlog-cosignature,
Ed25519 cosignature/v1) on one signed tree head of the ledger, named by its size and root. The
auditor names the witnesses they trust by verifier key; a cosignature counts only if

* its witness is one of those (by name and key id; any other is listed as unknown),
* the size and root it names are those of a signed tree head in the ledger (whose root the
  chain rules already matched to the records), and
* the line verifies over that tree head's note text, by the key the auditor gave.

A tree head the auditor holds (a witness's cosigned checkpoint) adds the cosignatures it bears.
The report says, for each witness, the largest size it cosigned, and the largest size that at
least ``quorum`` of them cosigned: the records beyond it are not yet witnessed that well.
Cosignatures are monotone (a witness cosigns a head only if it extends what it cosigned), so a
witness that cosigned size N vouches for every smaller head it was shown, too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.note import COSIGNATURE_V1, Vkey, open_note, split_note
from ledger.tlog_text import TreeHead, parse_checkpoint_text


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """What the cosignatures show: per witness, the largest size cosigned (0: none)."""

    quorum: int
    cosigned: dict[str, int]  # witness vkey -> largest size it cosigned, verified
    witnessed_size: int  # the largest size at least ``quorum`` of them cosigned
    unknown: int  # cosignatures by witnesses not given
    invalid: list[str]  # one line for each cosignature that did not verify, or named no signed head

    @property
    def met(self) -> bool:
        return self.witnessed_size > 0

    def to_json(self) -> dict[str, Any]:
        return {"quorum": self.quorum, "met": self.met, "witnessed_size": self.witnessed_size,
                "cosigned": self.cosigned, "unknown": self.unknown, "invalid": self.invalid}


def check_cosignatures(heads: Iterable[TreeHead], cosigned: Iterable[dict[str, Any]], witnesses: Sequence[Vkey],
                       quorum: int, held: str | None = None) -> WitnessReport:
    """``heads``: the ledger's signed tree heads; ``cosigned``: the data of its ``ledger.cosigned``
    records; ``held``: a cosigned checkpoint note the auditor holds, whose log signature the
    caller has checked."""
    by_size = {head.size: head for head in heads}
    best = {w.encode(): 0 for w in witnesses if w.sig_type == COSIGNATURE_V1}
    unknown, invalid = 0, []
    claims: list[tuple[TreeHead | None, str, str]] = [
        (_named(by_size, data), str(data.get("cosignature", "")), str(data.get("witness", "?"))) for data in cosigned]
    if held is not None:
        pinned, lines = _held(held)
        claims += [(pinned, line, line.split(" ", 2)[1] if line.count(" ") >= 2 else "?") for line in lines]
    for head, line, who in claims:
        if head is None:
            invalid.append(f"a cosignature by {who} names no signed tree head of this ledger")
            continue
        verdict = open_note(head.text() + "\n" + line, [w for w in witnesses if w.sig_type == COSIGNATURE_V1])
        if verdict.ok:
            for sig in verdict.verified:
                key = next(w.encode() for w in witnesses if (w.name, w.key_id) == (sig.name, sig.key_id))
                best[key] = max(best[key], head.size)
        elif verdict.reason == "no_known_signature":
            unknown += 1
        else:
            invalid.append(f"the cosignature by {who} on size {head.size} does not verify: {verdict.detail}")
    sizes = sorted(best.values(), reverse=True)
    witnessed = sizes[quorum - 1] if 0 < quorum <= len(sizes) else 0
    return WitnessReport(quorum, best, witnessed, unknown, invalid)


def _named(by_size: dict[int, TreeHead], data: dict[str, Any]) -> TreeHead | None:
    size = data.get("size")
    head = by_size.get(size) if isinstance(size, int) else None
    if head is None or data.get("root") != base64.b64encode(head.root).decode():
        return None
    return head


def _held(note: str) -> tuple[TreeHead, list[str]]:
    text, lines = split_note(note)
    head = parse_checkpoint_text(text)
    return head, [line.line() for line in lines if line.name != head.origin]  # the log's own is not a cosignature
