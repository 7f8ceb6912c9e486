"""The sealed content an evidence package discloses, by the operator's choice: ``content.jsonl``.

For each in-scope record that seals content, one line per sealed field, in order of seq, then
field (docs/ledger-format.md §11, rule 9): the field's data key, its content file and its value,
or that it was erased and by which ``content.erased`` record. A recipient checks each line against
the record, which commits to the ciphertext and to the key; the data key opens that one
inference only, and the group and operator keys never leave the appliance.

Invariants:

* Every field is opened by `anticloud.vault.reading.ContentReader`, every commitment checked; if
  one fails, nothing is disclosed and no package is made (EvidenceError names the field).
* A field a recorded erasure covers is disclosed as erased, never in the clear, even if its keys
  outlived the erasure; and the segment reaches that erasure (`ScopeContent`), so the recipient
  can see it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anticloud.errors import EvidenceError
from anticloud.vault.reading import SEALING_KINDS, ContentReader, Erasures
from ledger import ERASED_KIND, Record, canonical_bytes, content_refs, erasure_of, records_forward


@dataclass(slots=True)
class ScopeContent:
    """What a selection pass must know of sealed content: the key groups and inferences of the
    in-scope records so far, and every erasure (fed in ledger order)."""

    erasures: Erasures = field(default_factory=Erasures)
    keys: set[str] = field(default_factory=set)
    inferences: set[str] = field(default_factory=set)

    def hold(self, record: Record) -> None:
        """An in-scope record: remember what of its content an erasure could name."""
        refs, _ = content_refs(record.seq, record.kind, record.data)
        self.keys.update(ref.key for ref in refs)
        self.inferences.update(ref.inference for ref in refs)

    def erases_scope(self, record: Record) -> bool:
        """Feed one record; True if it is a ``content.erased`` that erases in-scope content held so
        far, which the package's segment must then reach."""
        if record.kind != ERASED_KIND:
            return False
        self.erasures.feed(record)
        try:
            keys, inferences = erasure_of(record.data)
        except ValueError:  # malformed: it erases nothing
            return False
        return bool(keys & self.keys or inferences & self.inferences)


@dataclass(frozen=True, slots=True)
class Disclosure:
    body: bytes  # content.jsonl
    disclosed: int
    erased: int


def disclose(ledger: Path, runs: list[list[int]], start: int, stop: int, reader: ContentReader) -> Disclosure:
    """The lines of ``content.jsonl`` for the in-scope ``runs`` (records between byte ``start`` and
    ``stop``); EvidenceError, naming the field, if any fails its checks."""
    lines: list[bytes] = []
    disclosed = erased = 0
    last = runs[-1][1]
    at = 0
    for located in records_forward(ledger, SEALING_KINDS, start=start, stop=stop):
        record = located.record
        if record.seq > last:
            break
        while runs[at][1] < record.seq:
            at += 1
        if record.seq < runs[at][0]:
            continue  # between runs: there for the chain only
        for found in reader.disclose(record):
            opened = found.opened
            line: dict[str, Any] = {"seq": opened.seq, "field": opened.field, "id": opened.id}
            if opened.state == "failed":
                raise EvidenceError(f"record {opened.seq}: its sealed {opened.field} failed its checks"
                                    f" ({opened.reason}); no package was made")
            if opened.state == "erased":
                line.update(state="erased", erased_at=opened.erased_at)
                erased += 1
            else:
                assert found.data_key is not None and found.blob is not None
                line.update(data_key=found.data_key.hex(), ciphertext=base64.b64encode(found.blob).decode(),
                            value=opened.value)
                disclosed += 1
            lines.append(canonical_bytes(line) + b"\n")
    return Disclosure(b"".join(lines), disclosed, erased)
