"""Reading a bundle from removable media: through directory descriptors, plain files only.

A bundle is a directory holding exactly ``manifest.json``, ``signatures.json`` and ``files/``.
Invariants: nothing is opened but through a directory descriptor opened with O_NOFOLLOW, and
every entry is checked with lstat before it is opened (then fstat confirms it is the same
inode), so no link, device or FIFO is ever followed or read, and a file swapped meanwhile is
refused. A file's size is checked against the manifest, and against ``import.max_file_bytes``,
before a byte of it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from anticloud.errors import BundleError
from anticloud.manifest import MAX_DOCUMENT_BYTES, Manifest

MANIFEST, SIGNATURES, FILES = "manifest.json", "signatures.json", "files"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BundleReader:
    """Reads a bundle through directory descriptors, refusing anything but plain files."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle
        self.fd = -1

    def __enter__(self) -> BundleReader:
        try:
            self.fd = os.open(self.bundle, _DIR_FLAGS)
        except OSError as exc:
            raise BundleError(f"{self.bundle} is not a bundle directory: {exc.strerror}") from None
        names = set(os.listdir(self.fd))
        if names != {MANIFEST, SIGNATURES, FILES}:
            odd = sorted(names ^ {MANIFEST, SIGNATURES, FILES})
            raise BundleError(f"a bundle holds exactly manifest.json, signatures.json and files/ (see: {odd})")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def document(self, name: str) -> bytes:
        fd = _open_plain(self.fd, name, name, MAX_DOCUMENT_BYTES)
        with open(fd, "rb") as handle:
            return handle.read(MAX_DOCUMENT_BYTES + 1)

    def files(self, manifest: Manifest, max_bytes: int) -> dict[str, int]:
        """Open every file the manifest names, after checking the directory holds nothing else."""
        try:
            files_fd = os.open(FILES, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise BundleError(f"files/ is not a plain directory: {exc.strerror}") from None
        opened: dict[str, int] = {}
        try:
            present = set(os.listdir(files_fd))
            for extra in sorted(present - {f.path for f in manifest.files}):
                raise BundleError(f"files/{_shown(extra)} is not in the manifest")
            for entry in manifest.files:
                if entry.path not in present:
                    raise BundleError(f"files/{entry.path} is missing")
                if entry.size > max_bytes:
                    raise BundleError(f"files/{entry.path} is {entry.size} bytes, over the policy limit of {max_bytes}")
                opened[entry.path] = _open_plain(files_fd, entry.path, f"files/{entry.path}", None, entry.size)
        except BaseException:
            for fd in opened.values():
                os.close(fd)
            raise
        finally:
            os.close(files_fd)
        return opened


def _shown(name: str) -> str:
    """A file name from the media, fit for a one-line message: as it is if plain, else escaped."""
    return name if name.isprintable() and len(name) <= 128 else repr(name[:128])


def _open_plain(dir_fd: int, name: str, label: str, max_size: int | None, size: int | None = None) -> int:
    """Open a regular, singly linked file under ``dir_fd``; lstat first, so nothing odd is ever opened."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise BundleError(f"{label}: {exc.strerror}") from None
    if stat.S_ISLNK(before.st_mode):
        raise BundleError(f"{label} is a symbolic link")
    if not stat.S_ISREG(before.st_mode):
        raise BundleError(f"{label} is not a regular file (a directory, device, FIFO or socket)")
    if before.st_nlink != 1:
        raise BundleError(f"{label} has {before.st_nlink} hard links; bundle files must have one")
    if max_size is not None and before.st_size > max_size:
        raise BundleError(f"{label} is over {max_size} bytes")
    if size is not None and before.st_size != size:
        raise BundleError(f"{label} is {before.st_size} bytes, the manifest says {size}")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise BundleError(f"{label} was replaced while it was checked")
    return fd
