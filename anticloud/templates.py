"""Chat templates under review: what `anticloud models template` shows and `models pin` records.

A chat template is Jinja code that llama.cpp's loader hands to the formatter of every chat
(CVE-2024-34359), so the policy admits only templates whose hashes someone pinned
(``chat_templates.pinned``, `anticloud.admission`). Review happens here: the templates are
read from the GGUF files themselves (a bundle's on the media, or a stored model's blobs),
through the same bounded pre-parse as import and load, so the text shown is the text whose
hash is pinned, and the manifest's declaration is shown beside it.

Pinning is one ``config.change`` of ``chat_templates.pinned`` that says which templates of
which model or bundle were pinned (``why``), so the ledger shows who let which code in.
Nothing is pinned that the pre-parse did not read: a hash is never typed by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from anticloud.config import Policy, change, load_config
from anticloud.errors import ModelError
from anticloud.gguf import inspect
from anticloud.home import Home
from anticloud.manifest import parse_manifest
from anticloud.media import MANIFEST, BundleReader
from anticloud.models import ModelStore
from ledger import LedgerWriter

PINNED = "chat_templates.pinned"


@dataclass(frozen=True, slots=True)
class Template:
    """One chat template as its GGUF file holds it."""

    file: str
    key: str  # tokenizer.chat_template, or tokenizer.chat_template.NAME
    sha3_256: str
    text: str
    declared: bool  # the signed manifest declares this very hash for it
    pinned: bool


def review(home: Home, source: str) -> list[Template]:
    """The chat templates of ``source``: a bundle directory if there is one at that path, else a stored model."""
    policy = load_config(home).policy
    files = _bundle_files(source, policy) if Path(source).is_dir() else _stored_files(home, source)
    with files as (declared, handles):
        return [t for path, handle in handles for t in _templates(path, handle, declared, policy)]


def pin(home: Home, writer: LedgerWriter, source: str, templates: list[Template]) -> list[str]:
    """Add the hashes of ``templates`` to the pinned ones (one recorded config.change); returns the hashes
    that were not pinned before."""
    pinned = list(load_config(home).doc["chat_templates"]["pinned"])
    added = sorted({t.sha3_256 for t in templates} - set(pinned))
    if added:
        change(home, writer, PINNED, pinned + added, {"pinned_from": source, "templates": [
            {"file": t.file, "key": t.key, "sha3_256": t.sha3_256} for t in templates if t.sha3_256 in added]})
    return added


Declared = dict[tuple[str, str], str]  # (file, key) -> the hash the manifest declares
Opened = tuple[Declared, list[tuple[str, BinaryIO]]]  # and each GGUF file, open, by its path in the manifest


@contextmanager
def _bundle_files(bundle: str, policy: Policy) -> Iterator[Opened]:
    with BundleReader(Path(bundle)) as reader:
        manifest = parse_manifest(reader.document(MANIFEST))
        fds = reader.files(manifest, policy.max_file_bytes)
        handles: list[tuple[str, BinaryIO]] = [(entry.path, open(fds[entry.path], "rb"))  # noqa: SIM115
                                                for entry in manifest.files]
        try:
            yield {(t.file, t.key): t.sha3_256 for t in manifest.chat_templates}, handles
        finally:
            for _, handle in handles:
                handle.close()


@contextmanager
def _stored_files(home: Home, name: str) -> Iterator[Opened]:
    store = ModelStore(home)
    manifest = store.get(name).manifest
    handles: list[tuple[str, BinaryIO]] = []
    try:
        for entry in manifest.files:
            try:
                fd = os.open(store.blob_path(entry.sha3_256), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                raise ModelError(f"{entry.path} of {name} cannot be read from the store: {exc.strerror}") from None
            handles.append((entry.path, open(fd, "rb")))  # noqa: SIM115
        yield {(t.file, t.key): t.sha3_256 for t in manifest.chat_templates}, handles
    finally:
        for _, handle in handles:
            handle.close()


def _templates(path: str, handle: BinaryIO, declared: Declared, policy: Policy) -> list[Template]:
    info = inspect(handle, policy.gguf)
    return [Template(path, key, sha, info.chat_templates[key], declared.get((path, key)) == sha,
                     sha in policy.pinned_templates) for key, sha in sorted(info.template_hashes.items())]
