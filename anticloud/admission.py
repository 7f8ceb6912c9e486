"""Admission: whether a model may enter the store, and whether it may be loaded. Pure rules, no I/O.

`anticloud.models` reads the signed documents and the weights, and calls `admit` at import
(``ModelStore.import_bundle``) and again at every load (``ModelStore.open_verified``): one
set of rules, so a model stored by an older, laxer import is refused at load in the words
an import would use today. Each caller calls it twice: first on the signed documents alone,
before a byte of the weights is copied (from the media into staging, or from the store into
sealed memory), then with what the GGUF pre-parse found in the copied, hashed bytes.

The rules, in the order they are checked:

1. Signatures: at least ``trust.min_signatures`` valid signatures over the manifest's exact
   bytes, by distinct trusted, unrevoked keys (`anticloud.manifest.check_signatures`).
2. Expiry: the manifest has not expired.
3. Layout: exactly one of the files is a ``.gguf`` (what llama.cpp loads is one file; a split
   model must be merged first), and every chat template the manifest declares belongs to it.
4. Pins: with ``chat_templates.require_pinned``, the hash of every declared chat template is
   in ``chat_templates.pinned``.
5. The weights: the chat templates the pre-parse found are exactly those declared, by key and
   hash (only when ``found`` is given).

What is not decided here, because it needs I/O, is left to the callers, which check it before
using the bytes: that the bytes hashed are those the manifest names (size and SHA3-256), that
the GGUF passes the bounded pre-parse (`anticloud.gguf`), that no stored model has the name
(import), and that no file on the media is over ``import.max_file_bytes`` (import only: a bound
on what is read from removable media, not a property of the model, so a changed ``[import]``
section governs imports and leaves stored models as they are).

A refusal raises `SignatureError` (rule 1) or `AdmissionError` (rules 2 to 5), each carrying
its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from anticloud.config import Policy
from anticloud.errors import AdmissionError
from anticloud.gguf import GgufInfo
from anticloud.manifest import (
    FileEntry,
    KeyLookup,
    Manifest,
    SignatureReport,
    Verify,
    check_signatures,
    digest,
    parse_manifest,
    parse_signatures,
)
from ledger import ed25519_valid


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict: a manifest that may enter the store, or be loaded, and why."""

    manifest: Manifest
    digest: str  # of the manifest's exact bytes, the ones the signatures cover
    report: SignatureReport
    weights: FileEntry  # the one GGUF file
    templates: dict[str, str]  # the declared chat templates of the weights: metadata key -> sha3-256:<hex>
    weights_checked: bool  # rule 5 applied: the pre-parse found exactly the declared templates


def admit(manifest_raw: bytes, signatures_raw: bytes, lookup: KeyLookup, policy: Policy,
          found: GgufInfo | None = None, *, now: datetime | None = None,
          verify: Verify = ed25519_valid) -> Admission:
    """Apply the rules above to a manifest's bytes, its signatures' bytes and, once the weights are
    hashed, their pre-parse; return the verdict or raise the first refusal (``ManifestError`` too,
    for documents that do not parse). ``now`` defaults to the current time."""
    manifest = parse_manifest(manifest_raw)
    report = check_signatures(manifest_raw, parse_signatures(signatures_raw), lookup, verify, policy.min_signatures)
    if manifest.expired(now):
        raise AdmissionError(f"the manifest of {manifest.name} expired at {manifest.expires}",
                             {"rule": "expiry", "expires": manifest.expires})
    weights = _the_weights(manifest)
    templates = _declared_templates(manifest, weights, policy)
    if found is not None:
        _found_as_declared(weights, templates, found.template_hashes)
    return Admission(manifest, digest(manifest_raw), report, weights, templates, found is not None)


def the_weights(paths: list[str]) -> str:
    """The one GGUF file among a bundle's files (rule 3), for the staging machine's bundler too."""
    weights = sorted(p for p in paths if p.endswith(".gguf"))
    if len(weights) != 1:
        held = f"{len(weights)}: {', '.join(weights)}" if weights else "none"
        raise AdmissionError(f"a model is exactly one .gguf file (a split model must be merged first); the bundle "
                             f"holds {held}", {"rule": "one-gguf", "gguf_files": weights})
    return weights[0]


def _the_weights(manifest: Manifest) -> FileEntry:
    path = the_weights([f.path for f in manifest.files])
    return next(f for f in manifest.files if f.path == path)


def _declared_templates(manifest: Manifest, weights: FileEntry, policy: Policy) -> dict[str, str]:
    declared: dict[str, str] = {}
    for t in manifest.chat_templates:
        if t.file != weights.path:  # never read, never checked: a template can only be the weights'
            raise AdmissionError(f"chat template {t.key!r} is declared for {t.file}, which is not the model's "
                                 ".gguf file", {"rule": "layout", "template": t.key, "template_file": t.file})
        if policy.require_pinned_templates and t.sha3_256 not in policy.pinned_templates:
            raise AdmissionError(f"chat template {t.key!r} of {t.file} ({t.sha3_256}) is not pinned by the policy; "
                                 "review it, then add its hash to chat_templates.pinned",
                                 {"rule": "pinned-templates", "template": t.key, "template_sha3_256": t.sha3_256})
        declared[t.key] = t.sha3_256
    return declared


def _found_as_declared(weights: FileEntry, declared: dict[str, str], found: dict[str, str]) -> None:
    if found == declared:
        return
    missing = sorted(declared.keys() - found.keys())
    undeclared = sorted(found.keys() - declared.keys())
    different = sorted(k for k in declared.keys() & found.keys() if declared[k] != found[k])
    parts = [f"{what}: {', '.join(_shown(k) for k in keys)}" for what, keys in
             (("missing", missing), ("undeclared", undeclared), ("different", different)) if keys]
    raise AdmissionError(f"the chat templates of {weights.path} differ from those the manifest declares "
                         f"({'; '.join(parts)})", {"rule": "declared-templates", "declared": declared, "found": found})


def _shown(key: str) -> str:
    """A metadata key from the file, fit for a one-line message."""
    return repr(key if len(key) <= 64 else key[:64] + "...")
