"""Evidence packages: the records of a time range or a person, in a file a regulator can verify alone.

A package is one tar archive holding one directory (docs/ledger-format.md, section 11):

* ``segment.jsonl`` -- the records from the first in scope through the one a signed checkpoint
  names, a contiguous run of ledger lines copied byte for byte;
* ``checkpoint.json`` -- that checkpoint: the nearest ``ledger.checkpoint`` record after the last
  record in scope, or, when there is none, a fresh one the appliance signs now and records;
* ``genesis.jsonl`` -- record 0, which names the appliance's key and the ledger's id;
* ``verify_ledger.py`` -- the standard-library verifier (``--package``), and ``README.txt``;
* ``manifest.json`` -- what was asked, which seqs are in scope, and the SHA3-256 of every other file;
* ``content.jsonl`` -- only if the operator chose to include it: the sealed content of the records
  in scope, opened, with the data keys that prove it (`anticloud.evidence_content`).

Invariants:

* A record can be linked to a checkpoint only through every record between them (the ledger has
  no Merkle tree), so a person's package holds the whole span, and says so: the records of
  others in it are there for the chain, and the manifest lists which seqs are in scope.
* Only a chain the verifier finds intact (or torn, its complete records intact) is packaged, and
  a package is published only once `ledger.verify_package` finds it intact.
* The file appears whole or not at all, and never replaces one: it is written beside ``out``,
  synced, and linked to ``out`` (which fails if ``out`` exists).
* Producing a package is recorded (``ledger.export``: who, what was asked, how many records,
  whether content was disclosed and how much, the digests). If that record cannot be written,
  the package is removed: nothing leaves unrecorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.audit import Annotator, Filter
from anticloud.errors import EvidenceError
from anticloud.evidence_content import Disclosure, ScopeContent, disclose
from anticloud.evidence_readme import readme
from anticloud.vault.reading import ContentReader
from ledger import (
    CONTENT_FILE,
    PACKAGE_TYPE,
    LedgerWriter,
    SignedCheckpoint,
    append_checkpoint,
    complete_end,
    fsync_dir,
    records_backward,
    records_forward,
    utc_timestamp,
    verify_file,
    verify_package,
)

EXPORT_KIND = "ledger.export"
CHECKPOINT_KIND = "ledger.checkpoint"
# Members in which `inference.record_content = "plaintext"` keeps what was asked and answered.
CONTENT_MEMBERS = frozenset({"prompt", "messages", "input", "output"})
ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class Selection:
    """What one pass over the ledger found: the records in scope, and a checkpoint after them."""

    genesis_line: bytes = b""
    runs: list[list[int]] = field(default_factory=list)  # [first, last] seqs in scope, in order
    count: int = 0
    first_offset: int | None = None  # where the first record in scope starts
    checkpoint: SignedCheckpoint | None = None  # from the nearest ledger.checkpoint after the last in scope
    checkpoint_record: int | None = None  # that record's seq
    checkpoint_offset: int | None = None  # where it starts: the end of the record it signs
    content: ScopeContent | None = None  # when content is disclosed: what an erasure of it would name

    def add(self, seq: int, offset: int) -> None:
        if self.runs and self.runs[-1][1] == seq - 1:
            self.runs[-1][1] = seq
        else:
            self.runs.append([seq, seq])
        self.count += 1
        self.first_offset = offset if self.first_offset is None else self.first_offset
        self.checkpoint = self.checkpoint_record = self.checkpoint_offset = None  # it must come after this

    def reach(self) -> None:
        """The segment must reach the current record (an erasure of content in scope)."""
        self.checkpoint = self.checkpoint_record = self.checkpoint_offset = None


@dataclass(frozen=True, slots=True)
class Package:
    path: Path
    manifest: dict[str, Any]
    manifest_digest: str
    file_digest: str
    export_seq: int


def select(path: Path, query: Filter, end: int, records: int, content: bool = False) -> Selection:
    """The records of ``path`` that ``query`` keeps (by the audit's rules), among the first ``records``
    records lying before byte ``end``, and the nearest checkpoint record after the last of them;
    with ``content``, after the last ``content.erased`` that erases content in scope too."""
    selection = Selection(content=ScopeContent() if content else None)
    annotator = Annotator()
    for located in records_forward(path, None, stop=end):
        record = located.record
        if record.seq >= records:
            break
        if record.seq == 0:
            with open(path, "rb") as handle:
                selection.genesis_line = handle.read(located.length)
        if selection.content is not None and selection.content.erases_scope(record):
            selection.reach()
        if query.matches(record, annotator.facts(record)):
            selection.add(record.seq, located.offset)
            if selection.content is not None:
                selection.content.hold(record)
        elif record.kind == CHECKPOINT_KIND and selection.count and selection.checkpoint is None:
            selection.checkpoint = SignedCheckpoint.from_json(record.data)
            selection.checkpoint_record, selection.checkpoint_offset = record.seq, located.offset
    return selection


def find_verifier() -> Path:
    """The standard-library verifier: in the source tree, or where an install kit put it (share/anticloud)."""
    installed = Path(sys.prefix) / "share" / "anticloud" / "verify_ledger.py"
    for candidate in (ROOT / "tools" / "verify_ledger.py", installed):
        if candidate.is_file():
            return candidate
    raise EvidenceError("cannot find verify_ledger.py to put in the package (tools/ of the source, or "
                        "share/anticloud/ of an installed kit); give --verifier FILE")


def produce(ledger_path: Path, writer: LedgerWriter, key: Callable[[], Ed25519PrivateKey], query: Filter,
            out: Path, verifier: Path, actor: dict[str, Any], content: ContentReader | None = None) -> Package:
    """Make the package of the records ``query`` keeps at ``out`` (a new .tar), and record it; with
    ``content``, the package discloses the sealed content of the records in scope."""
    if out.suffix != ".tar":
        raise EvidenceError(f"{out}: a package is a tar archive; name it something.tar")
    if out.exists() or out.is_symlink():
        raise EvidenceError(f"{out} already exists; a package never replaces a file")
    verifier_bytes = verifier.read_bytes()
    end = complete_end(ledger_path)
    verdict = verify_file(ledger_path)
    if verdict.status not in ("intact", "torn"):
        where = f" at seq {verdict.fault.seq}: {verdict.fault.detail}" if verdict.fault else ""
        raise EvidenceError(f"the ledger does not verify ({verdict.status}{where}); run `anticloud verify ledger`")
    selection = select(ledger_path, query, end, verdict.records, content is not None)
    if not selection.count:
        raise EvidenceError("no record matches; there is nothing to package")
    assert selection.first_offset is not None
    disclosure = None
    if content is not None and selection.content is not None:  # before anything is written: it may refuse
        content.erasures = selection.content.erasures  # the erasures of the ledger this pass verified
        disclosure = disclose(ledger_path, selection.runs, selection.first_offset, end, content)
    source = "ledger record"
    if selection.checkpoint is None:  # none after the last record in scope: sign the head now, and record it
        selection.checkpoint = append_checkpoint(writer, key())
        selection.checkpoint_record = selection.checkpoint.checkpoint.seq + 1
        selection.checkpoint_offset = _offset_of(ledger_path, selection.checkpoint_record)
        source = "appended for this package"
    assert selection.checkpoint_offset is not None and selection.checkpoint_record is not None
    first = selection.runs[0][0]
    cp = selection.checkpoint.checkpoint
    manifest: dict[str, Any] = {
        "type": PACKAGE_TYPE, "v": 1, "created": utc_timestamp(), "produced_by": actor,
        "ledger_id": verdict.ledger_id, "key_id": verdict.key_id,
        "range": {"since": query.since, "until": query.until}, "filter": query.to_json(),
        "segment": {"first_seq": first, "last_seq": cp.seq, "records": cp.seq - first + 1},
        "in_scope": {"count": selection.count, "runs": selection.runs},
        "checkpoint": {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts, "record_seq": selection.checkpoint_record,
                       "source": source},
        "context": CONTEXT if cp.seq - first + 1 > selection.count else None,
        "content": _content(ledger_path, selection.first_offset, selection.checkpoint_offset, disclosure),
    }
    static = {"genesis.jsonl": selection.genesis_line, "checkpoint.json": selection.checkpoint.to_bytes(),
              "verify_ledger.py": verifier_bytes}
    if disclosure is not None:
        static[CONTENT_FILE] = disclosure.body
    partial = _write(out, manifest, static, ledger_path, selection.first_offset, selection.checkpoint_offset)
    try:
        checked = verify_package(partial)
        if checked.status != "intact":
            problem = checked.fault.detail if checked.fault else checked.status
            raise EvidenceError(f"the package did not verify before it was published: {problem}")
        file_digest = _digest(partial)
        _publish(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    manifest_digest = "sha3-256:" + hashlib.sha3_256(_manifest_bytes(manifest)).hexdigest()
    try:
        record = writer.append(EXPORT_KIND, {
            "actor": actor, "range": manifest["range"], "filter": manifest["filter"],
            "records": selection.count, "segment": manifest["segment"],
            "checkpoint": {"seq": cp.seq, "hash": cp.hash, "record_seq": selection.checkpoint_record},
            "content": {k: v for k, v in manifest["content"].items() if k != "records_with_text"},
            "package": {"name": out.name, "manifest_sha3_256": manifest_digest, "sha3_256": file_digest}})
    except BaseException:
        out.unlink(missing_ok=True)  # not recorded, so not handed over
        raise
    return Package(out, manifest, manifest_digest, file_digest, record.seq)


CONTEXT = ("The ledger links each record to the next by its hash, and has no other proof structure yet: a"
           " record can be tied to the signed checkpoint only through every record between them. The segment"
           " therefore holds every record from the first in scope through the one the checkpoint signs; the"
           " records not listed in in_scope are included for that reason alone.")


def _content(path: Path, start: int, stop: int, disclosure: Disclosure | None) -> dict[str, Any]:
    """How many records of the segment keep prompts, inputs or outputs as text (record_content =
    plaintext), and whether the package discloses sealed content, and how many fields."""
    holding = 0
    for located in records_forward(path, ["inference.begin", "inference.end"], start=start, stop=stop):
        holding += not CONTENT_MEMBERS.isdisjoint(located.record.data)
    if disclosure is None:
        return {"records_with_text": holding, "included": False}
    return {"records_with_text": holding, "included": True, "disclosed": disclosure.disclosed,
            "erased": disclosure.erased}


def _offset_of(path: Path, seq: int) -> int:
    for located in records_backward(path):
        if located.record.seq == seq:
            return located.offset
    raise EvidenceError(f"record {seq} is not in {path}")  # only if the ledger shrank under us


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(out: Path, manifest: dict[str, Any], static: dict[str, bytes], ledger_path: Path,
           start: int, stop: int) -> Path:
    """Write the archive to a new file beside ``out`` and return its path; ``manifest`` gains ``files``."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    partial = Path(name)
    top = out.name.removesuffix(".tar")
    mtime = int(time.time())
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(top + "/", 0, mtime, directory=True))
            files: dict[str, str] = {}
            with open(ledger_path, "rb") as ledger:
                ledger.seek(start)
                reader = _Hashing(ledger, stop - start)
                tar.addfile(_info(f"{top}/segment.jsonl", stop - start, mtime), reader)
                files["segment.jsonl"] = "sha3-256:" + reader.sha3.hexdigest()
            for file_name, data in {**static, "README.txt": readme(manifest, top).encode()}.items():
                tar.addfile(_info(f"{top}/{file_name}", len(data), mtime), io.BytesIO(data))
                files[file_name] = "sha3-256:" + hashlib.sha3_256(data).hexdigest()
            manifest["files"] = dict(sorted(files.items()))
            body = _manifest_bytes(manifest)
            tar.addfile(_info(f"{top}/manifest.json", len(body), mtime), io.BytesIO(body))
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial


def _info(name: str, size: int, mtime: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, mtime, 0, 0, "", ""
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info


class _Hashing(io.RawIOBase):
    """At most ``size`` bytes of ``source``, hashed as they are read."""

    def __init__(self, source: IO[bytes], size: int) -> None:
        super().__init__()
        self.source, self.left, self.sha3 = source, size, hashlib.sha3_256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.source.read(n)
        self.left -= len(data)
        self.sha3.update(data)
        return data


def _digest(path: Path) -> str:
    sha3 = hashlib.sha3_256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            sha3.update(block)
    return "sha3-256:" + sha3.hexdigest()


def _publish(partial: Path, out: Path) -> None:
    """Give ``partial`` the name ``out``, which must not exist: a link fails where a rename would replace."""
    try:
        os.link(partial, out)
    except FileExistsError:
        raise EvidenceError(f"{out} appeared while the package was made; it was left as it is") from None
    fsync_dir(out.parent)
