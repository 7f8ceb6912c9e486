"""The content store beside the ledger: one file per sealed field, named by its content id.

A file is written in full, fsynced, renamed into place and its directory fsynced before the
record that commits to it is appended (docs/ledger-format.md §15), so no record ever commits
to content that was not kept. What a crash leaves behind is at worst an orphan: a file no record
names. Files are never changed once written; erasure may shred them.
"""

from __future__ import annotations

import os
from pathlib import Path

from anticloud.errors import ContentSealError
from anticloud.fsutil import atomic_write, fsync_dir
from anticloud.vault.keyring import PRIVATE, shred
from ledger import content_path


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, content_id: str) -> Path:
        if not content_id or "/" in content_id or content_id.startswith("."):
            raise ContentSealError(f"{content_id!r} is not a content id")
        return content_path(self.root, content_id)

    def put(self, content_id: str, blob: bytes) -> None:
        path = self.path(content_id)
        if not path.parent.is_dir():  # a new directory's own entry is made durable too
            made_root = not self.root.is_dir()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            fsync_dir(self.root)
            if made_root:
                fsync_dir(self.root.parent)
        atomic_write(path, blob, PRIVATE)

    def get(self, content_id: str) -> bytes | None:
        """The file's bytes, or None if it is not there."""
        try:
            return self.path(content_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, content_id: str) -> bool:
        """Shred a content file; whether there was one."""
        path = self.path(content_id)
        existed = path.exists()
        shred(path)
        return existed
