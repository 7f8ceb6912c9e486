"""Making bundles on the connected staging machine: copy, hash, inspect, describe, sign.

A bundle is a directory holding ``manifest.json``, ``signatures.json`` and ``files/`` with
one plain file per manifest entry; nothing else. Exactly one of the files is a ``.gguf``.
See `anticloud.manifest` for the formats.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.admission import the_weights
from anticloud.errors import BundleError, ManifestError
from anticloud.gguf import GgufLimits, inspect
from anticloud.hashing import copy_and_hash
from anticloud.manifest import (
    FILE_NAME_RE,
    FileEntry,
    Manifest,
    Signature,
    TemplateEntry,
    new_manifest,
    parse_manifest,
    parse_signatures,
    signatures_bytes,
)
from anticloud.media import FILES, MANIFEST, SIGNATURES
from anticloud.progress import byte_progress
from ledger import key_id_of, raw_public_key


def create_bundle(sources: Sequence[Path], name: str, key: Ed25519PrivateKey, out: Path,
                  expires: datetime | None = None, limits: GgufLimits | None = None) -> Manifest:
    """Write a signed bundle of ``sources`` to the new directory ``out``."""
    names = [s.name for s in sources]
    for n in names:
        if not FILE_NAME_RE.match(n):
            raise BundleError(f"{n!r}: bundle file names are letters, digits, '.', '_' and '-'")
    if len(set(names)) != len(names):
        raise BundleError("two source files have the same name")
    the_weights(names)
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        raise BundleError(f"{out} already exists; choose a new directory") from None
    (out / FILES).mkdir()
    entries, templates = [], []
    for source in sources:
        target = out / FILES / source.name
        with open(source, "rb") as src, open(target, "xb") as dst:
            size = os.fstat(src.fileno()).st_size
            with byte_progress(f"hashing {source.name}", size) as advance:
                sha, copied = copy_and_hash(src.fileno(), dst.fileno(), advance)
            os.fsync(dst.fileno())
        entries.append(FileEntry(source.name, copied, sha))
        if source.suffix == ".gguf":
            with open(target, "rb") as staged:
                info = inspect(staged, limits)
            templates += [TemplateEntry(source.name, k, h) for k, h in info.template_hashes.items()]
    try:
        manifest = new_manifest(name, entries, templates, expires)
    except ManifestError as exc:
        raise BundleError(str(exc)) from None
    seal(out, manifest, key)
    return manifest


def seal(out: Path, manifest: Manifest, key: Ed25519PrivateKey) -> Signature:
    """Write ``manifest`` into ``out`` with one signature, by ``key``; return the signature."""
    raw = manifest.to_bytes()
    (out / MANIFEST).write_bytes(raw)
    signature = _sign(raw, key)
    (out / SIGNATURES).write_bytes(signatures_bytes([signature]))
    return signature


def sign_bundle(bundle: Path, key: Ed25519PrivateKey) -> str:
    """Add a signature by ``key`` to an existing bundle; return the key id."""
    raw = (bundle / MANIFEST).read_bytes()
    parse_manifest(raw)
    existing = parse_signatures((bundle / SIGNATURES).read_bytes())
    signature = _sign(raw, key)
    if any(s.key_id == signature.key_id for s in existing):
        raise BundleError(f"the bundle is already signed by {signature.key_id}")
    (bundle / SIGNATURES).write_bytes(signatures_bytes([*existing, signature]))
    return signature.key_id


def _sign(raw: bytes, key: Ed25519PrivateKey) -> Signature:
    return Signature(key_id_of(raw_public_key(key.public_key())), key.sign(raw))
