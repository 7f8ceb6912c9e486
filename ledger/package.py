"""Verify an evidence package: a segment of a ledger with its genesis, a signed checkpoint and a manifest.

A package is a directory, or a tar archive holding one directory, of exactly these regular
files (docs/ledger-format.md, section 11): ``manifest.json``, ``genesis.jsonl``,
``segment.jsonl``, ``checkpoint.json``, and whatever else the manifest lists with its SHA3-256
(the appliance adds ``README.txt`` and ``verify_ledger.py``). Checked in this order, the first
fault being the verdict:

1. the package's shape: regular files only (no links, devices or subdirectories), each name
   once, the four above present (**package_invalid**, **file_missing**);
2. the manifest's own form (**manifest_invalid**);
3. the genesis, the checkpoint and the segment (`ledger.segment`);
4. the manifest's claims: ledger and key ids, the segment's first and last seq and count, the
   checkpoint's seq and hash, the in-scope runs lying within the pinned span (**manifest_mismatch**);
5. every file but the manifest is listed, and has the SHA3-256 listed (**file_extra**,
   **file_missing**, **file_mismatch**);
6. if the package discloses sealed content (``content.jsonl``), every line against the segment
   (`ledger.disclosure`: **content_invalid**, **content_mismatch**, and **manifest_mismatch** for
   its counts). Without AES-GCM (``open_sealed`` None) the plaintext is not compared, and a
   package that discloses any is ``unchecked``, never ``intact``.

The manifest is not signed: its file hashes find damage, not forgery. What the signature
proves is the segment up to the checkpoint; the genesis is trusted only as far as its key's
fingerprint matches the one the recipient got from the operator out of band (or ``public_key``).

A tar is read in place, never extracted. A path that is neither a directory nor a tar archive
raises LedgerReadError (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ledger.canonical import loads_strict
from ledger.chain import SignatureCheck
from ledger.checkpoint import LEDGER_ID_RE, ed25519_valid
from ledger.disclosure import (
    CONTENT_FILE,
    MAX_CONTENT_LINE_BYTES,
    ContentOpen,
    DisclosureCheck,
    DisclosureSummary,
    aesgcm_open,
)
from ledger.errors import LedgerReadError
from ledger.record import MAX_LINE_BYTES
from ledger.segment import (
    CHECKPOINT_FILE,
    GENESIS_FILE,
    MANIFEST_FILE,
    SEGMENT_FILE,
    PackageFault,
    SegmentCheck,
    SegmentFault,
    fault,
)
from ledger.verify import EXIT_CODES

PACKAGE_TYPE = "anticloud.evidence.package"
REQUIRED = (MANIFEST_FILE, GENESIS_FILE, CHECKPOINT_FILE, SEGMENT_FILE)
MAX_MANIFEST_BYTES = 64 << 20
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"sha3-256:[0-9a-f]{64}\Z")


@dataclass(slots=True)
class PackageVerdict:
    status: str
    path: str
    signatures_checked: bool
    ledger_id: str | None = None
    key_id: str | None = None
    segment: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    in_scope: int | None = None
    checkpoints_in_segment: int = 0
    files: dict[str, str] = field(default_factory=dict)  # name -> digest, every file that matched the manifest
    content: DisclosureSummary | None = None  # what content.jsonl disclosed, if the package has one
    fault: PackageFault | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        seg, cp = self.segment, self.checkpoint
        pinned = None if seg is None or cp is None else {"first_seq": seg["first_seq"], "last_seq": cp["seq"]}
        return {
            "verdict": self.status, "exit_code": self.exit_code, "path": self.path, "package": True,
            "ledger_id": self.ledger_id, "key_id": self.key_id, "signatures_checked": self.signatures_checked,
            "segment": seg, "checkpoint": cp, "pinned": pinned,
            "unpinned": None if pinned is None or seg is None else seg["last_seq"] - pinned["last_seq"],
            "in_scope": self.in_scope, "checkpoints_in_segment": self.checkpoints_in_segment,
            "files": dict(sorted(self.files.items())),
            "content": None if self.content is None else self.content.to_json(),
            "fault": None if self.fault is None else self.fault.to_json(),
        }


def verify_package(path: Path, public_key: bytes | None = None,
                   check_signature: SignatureCheck | None = ed25519_valid,
                   open_sealed: ContentOpen | None = aesgcm_open) -> PackageVerdict:
    """Check the package at ``path`` (a directory or a tar archive); see the module docstring."""
    verdict = PackageVerdict("broken", str(path), check_signature is not None)
    with _open_source(Path(path)) as source:
        try:
            _check(source, verdict, public_key, check_signature, open_sealed)
        except SegmentFault as sf:
            verdict.fault = sf.fault
            return verdict
    unchecked_plaintext = verdict.content is not None and verdict.content.disclosed and open_sealed is None
    verdict.status = "unchecked" if check_signature is None or unchecked_plaintext else "intact"
    return verdict


def _check(source: _Source, verdict: PackageVerdict, public_key: bytes | None,
           check_signature: SignatureCheck | None, open_sealed: ContentOpen | None) -> None:
    source.check_shape()
    manifest = _manifest(source.read(MANIFEST_FILE, MAX_MANIFEST_BYTES, "manifest_invalid"))
    check = SegmentCheck(manifest["segment"]["first_seq"], check_signature, public_key)
    genesis = check.feed_genesis(source.read(GENESIS_FILE, MAX_LINE_BYTES + 1, "bad_genesis"))
    verdict.ledger_id, verdict.key_id = genesis.ledger_id, genesis.key_id
    cp = check.feed_checkpoint(source.read(CHECKPOINT_FILE, MAX_LINE_BYTES + 1, "invalid_checkpoint"))
    verdict.checkpoint = {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts}
    disclosure = DisclosureCheck(genesis.ledger_id, manifest["in_scope"]["runs"], cp.seq, open_sealed) \
        if CONTENT_FILE in source.names else None
    try:
        with source.open(SEGMENT_FILE) as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                record = check.feed(raw)
                if disclosure is not None:
                    disclosure.feed(record)
                verdict.segment = _span(check)
                verdict.checkpoints_in_segment = check.checkpoints
        check.finish()
    finally:
        verdict.segment = _span(check)
        verdict.checkpoints_in_segment = check.checkpoints
    verdict.in_scope = _check_claims(manifest, check)
    verdict.files = _check_files(source, manifest["files"])
    if disclosure is not None:
        with source.open(CONTENT_FILE) as handle:
            while raw := handle.readline(MAX_CONTENT_LINE_BYTES + 1):
                disclosure.line(raw)
        verdict.content = disclosure.finish(manifest)


def _span(check: SegmentCheck) -> dict[str, Any] | None:
    if check.first is None or check.head is None:
        return None
    return {"first_seq": check.first.seq, "last_seq": check.head.seq, "records": check.count,
            "first_ts": check.first.ts, "last_ts": check.head.ts}


# -- the manifest ------------------------------------------------------------------------------------


def _manifest(raw: bytes) -> dict[str, Any]:
    """The manifest's form (rule 2): the members the rules read, of the right types."""
    try:
        doc = loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise fault("manifest_invalid", MANIFEST_FILE, f"not JSON in the ledger's profile: {exc}") from None
    problem = _manifest_problem(doc)
    if problem is not None:
        raise fault("manifest_invalid", MANIFEST_FILE, problem)
    return dict(doc)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _manifest_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "the manifest is a JSON object"
    if doc.get("type") != PACKAGE_TYPE or type(doc.get("v")) is not int or doc.get("v") != 1:
        return f"type must be {PACKAGE_TYPE} and v the integer 1"
    if not isinstance(doc.get("ledger_id"), str) or not LEDGER_ID_RE.match(doc["ledger_id"]):
        return "ledger_id must be 32 lowercase hex digits"
    if not isinstance(doc.get("key_id"), str):
        return "key_id must be a string"
    seg, cp, scope, files = doc.get("segment"), doc.get("checkpoint"), doc.get("in_scope"), doc.get("files")
    if not isinstance(seg, dict) or not all(_count(seg.get(k)) for k in ("first_seq", "last_seq", "records")):
        return "segment must hold the integers first_seq, last_seq and records"
    if not isinstance(cp, dict) or not _count(cp.get("seq")) or not isinstance(cp.get("hash"), str):
        return "checkpoint must hold the integer seq and the string hash"
    return _scope_problem(scope) or _files_problem(files)


def _scope_problem(scope: Any) -> str | None:
    if not isinstance(scope, dict) or not _count(scope.get("count")) or not isinstance(scope.get("runs"), list):
        return "in_scope must hold the integer count and the list runs"
    for run in scope["runs"]:
        if not (isinstance(run, list) and len(run) == 2 and _count(run[0]) and _count(run[1]) and run[0] <= run[1]):
            return "each in_scope run is [first, last], two seqs in order"
    return None


def _files_problem(files: Any) -> str | None:
    if not isinstance(files, dict):
        return "files must map file names to sha3-256 digests"
    for name, digest in files.items():
        if not FILE_NAME_RE.match(name) or name == MANIFEST_FILE:
            return f"files names {name!r}, which is not a plain file name other than {MANIFEST_FILE}"
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            return f"the digest of {name} must be sha3-256: and 64 lowercase hex digits"
    return None


def _check_claims(manifest: dict[str, Any], check: SegmentCheck) -> int:
    """Rule 4: what the manifest says equals what was verified. Returns the in-scope count."""
    assert check.genesis is not None and check.checkpoint is not None and check.head is not None
    seg, cp, scope = manifest["segment"], manifest["checkpoint"], manifest["in_scope"]
    claims: list[tuple[str, object, object]] = [
        ("ledger_id", check.genesis.ledger_id, manifest["ledger_id"]),
        ("key_id", check.genesis.key_id, manifest["key_id"]),
        ("segment.last_seq", check.head.seq, seg["last_seq"]),
        ("segment.records", check.count, seg["records"]),
        ("checkpoint.seq", check.checkpoint.seq, cp["seq"]),
        ("checkpoint.hash", check.checkpoint.hash, cp["hash"]),
        ("in_scope.count", sum(b - a + 1 for a, b in scope["runs"]), scope["count"]),
    ]
    for name, verified, claimed in claims:
        if verified != claimed:
            raise fault("manifest_mismatch", MANIFEST_FILE, f"the manifest's {name} is not what the package holds",
                        verified, claimed)
    low = check.first_seq
    for a, b in scope["runs"]:
        if a < low or b > check.checkpoint.seq:
            raise fault("manifest_mismatch", MANIFEST_FILE, "an in-scope run lies outside the pinned span, or the"
                        " runs overlap or are out of order", f"within {low}..{check.checkpoint.seq}", f"[{a}, {b}]")
        low = b + 1
    return int(scope["count"])


def _check_files(source: _Source, listed: dict[str, str]) -> dict[str, str]:
    """Rule 5: the files and their digests, against the manifest; the first problem by name is the fault."""
    present = {name for name in source.names if name != MANIFEST_FILE}
    matched: dict[str, str] = {}
    problems: list[tuple[str, str, str | None, str | None]] = []
    for name in sorted(present | set(listed)):
        if name not in listed:
            problems.append(("file_extra", name, None, "a file the manifest does not list"))
            continue
        if name not in present:
            problems.append(("file_missing", name, listed[name], None))
            continue
        digest = source.digest(name)
        if digest != listed[name]:
            problems.append(("file_mismatch", name, listed[name], digest))
        else:
            matched[name] = digest
    if problems:
        reason, name, expected, actual = problems[0]
        counts = {r: sum(p[0] == r for p in problems) for r in ("file_mismatch", "file_missing", "file_extra")}
        summary = ", ".join(f"{n} {r.removeprefix('file_')}" for r, n in counts.items())
        raise fault(reason, name, f"{name} is not as the manifest lists it ({summary})", expected, actual)
    return matched


# -- reading a directory or a tar ------------------------------------------------------------------------


class _Source:
    """The files of a package, by name. ``problems`` holds what is wrong with its shape."""

    def __init__(self, names: list[str], problems: list[tuple[str, str]]) -> None:
        self.names = names
        self.problems = problems

    def check_shape(self) -> None:
        """Rule 1."""
        if self.problems:
            name, why = self.problems[0]
            raise fault("package_invalid", name, why)
        for name in REQUIRED:
            if name not in self.names:
                raise fault("file_missing", name, f"the package holds no {name}")

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def read(self, name: str, limit: int, reason: str) -> bytes:
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise fault(reason, name, f"{name} is longer than {limit} bytes")
        return data

    def digest(self, name: str) -> str:
        sha3 = hashlib.sha3_256()
        with self.open(name) as handle:
            while block := handle.read(1 << 20):
                sha3.update(block)
        return "sha3-256:" + sha3.hexdigest()


class _Directory(_Source):
    def __init__(self, root: Path) -> None:
        names, problems = [], []
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False):
                    names.append(entry.name)
                else:
                    problems.append((entry.name, f"{entry.name} is not a regular file"))
        super().__init__(names, problems)
        self.root = root

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        fd = os.open(self.root / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return os.fdopen(fd, "rb")


class _Tar(_Source):
    """A tar holding one directory of regular files, read in place."""

    def __init__(self, archive: tarfile.TarFile) -> None:
        self.archive = archive
        self.members: dict[str, tarfile.TarInfo] = {}
        problems: list[tuple[str, str]] = []
        members = archive.getmembers()
        top = members[0].name.split("/")[0] if members else ""
        for member in members:
            parts = member.name.rstrip("/").split("/")
            if member.isdir() and parts == [top]:
                continue
            name = parts[-1]
            if len(parts) != 2 or parts[0] != top or not member.isfile():
                problems.append((member.name, f"{member.name} is not a regular file directly under {top}/"))
            elif name in self.members:
                problems.append((name, f"{name} is in the archive more than once"))
            else:
                self.members[name] = member
        super().__init__(list(self.members), problems)

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        handle = self.archive.extractfile(self.members[name])
        assert handle is not None  # a regular file
        return handle


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    try:
        if path.is_dir():
            yield _Directory(path)
            return
        with tarfile.open(path, "r:*") as archive:
            yield _Tar(archive)
    except tarfile.TarError:  # its message lists every compression tried, one line each
        raise LedgerReadError(f"{path} is neither a directory nor a tar archive (plain, gzip, bzip2 or xz)") from None
    except OSError as exc:
        raise LedgerReadError(f"cannot read package {path}: {exc.strerror or exc}") from None
