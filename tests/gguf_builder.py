"""Write small, valid GGUF files for tests, field by field, so tests can break any one field.

`rewrite` does the same to a real model: it copies its tensors and weights unchanged under
edited metadata, so a test can put a crafted key into the real Gemma.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

STRING, ARRAY, UINT32, FLOAT32 = 8, 9, 4, 6
_WIDTHS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, kind: int, value: Any, element: int | None = None) -> bytes:
    head = _s(key) + struct.pack("<I", kind)
    if kind == STRING:
        return head + _s(value)
    if kind == UINT32:
        return head + struct.pack("<I", value)
    if kind == FLOAT32:
        return head + struct.pack("<f", value)
    if kind == ARRAY:
        assert element is not None
        body = b"".join(_s(v) if element == STRING else struct.pack("<I", v) for v in value)
        return head + struct.pack("<IQ", element, len(value)) + body
    raise ValueError(kind)


def tensor(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ggml_type, offset)


def build(metadata: list[bytes] | None = None, tensors: list[tuple[str, list[int], int]] | None = None,
          version: int = 3, alignment: int = 32) -> bytes:
    """A GGUF whose tensors (name, dims, ggml type F32=0 or F16=1) are laid out contiguously."""
    metadata = metadata if metadata is not None else [kv("general.architecture", STRING, "test")]
    tensors = tensors if tensors is not None else [("weight", [8, 4], 0)]
    infos, offset, sizes = [], 0, []
    for name, dims, kind in tensors:
        nbytes = (4 if kind == 0 else 2) * _product(dims)
        infos.append(tensor(name, dims, kind, offset))
        sizes.append(nbytes)
        offset = (offset + nbytes + alignment - 1) // alignment * alignment
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata)) + b"".join(metadata) + b"".join(infos)
    head += b"\0" * ((-len(head)) % alignment)
    if sum(sizes) > 1 << 20:  # a hostile shape: the header alone is what is under test
        return head
    data = b"".join(bytes(range(256)) * (n // 256) + bytes(n % 256) + b"\0" * ((-n) % alignment) for n in sizes)
    return head + data


def _product(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def key_of(entry: bytes) -> bytes:
    """The key of one encoded metadata entry, as `kv` writes it."""
    return entry[8:8 + struct.unpack_from("<Q", entry)[0]]


def rewrite(source: Path, target: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    """Copy the GGUF ``source`` to ``target`` with its metadata entries passed through ``edit``.

    The tensor table and the weights are copied as they are; the weights move to the new
    aligned start of the data section, which tensor offsets are relative to.
    """
    with open(source, "rb") as src:
        head = src.read(64 << 20)
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", head, 4)
        pos, entries, alignment = 24, [], 32
        for _ in range(n_kv):
            start = pos
            pos += 8 + struct.unpack_from("<Q", head, pos)[0]
            kind = struct.unpack_from("<I", head, pos)[0]
            pos = _value_end(head, pos + 4, kind)
            entries.append(head[start:pos])
            if key_of(entries[-1]) == b"general.alignment":
                alignment = struct.unpack_from("<I", head, pos - 4)[0]
        tensors_start = pos
        for _ in range(n_tensors):
            pos += 8 + struct.unpack_from("<Q", head, pos)[0]
            pos += 4 + 8 * struct.unpack_from("<I", head, pos)[0] + 4 + 8
        tensor_table = head[tensors_start:pos]
        data_start = (pos + alignment - 1) // alignment * alignment
        new = edit(entries)
        out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(new)) + b"".join(new) + tensor_table
        out += b"\0" * ((-len(out)) % alignment)
        with open(target, "wb") as dst:
            dst.write(out)
            src.seek(data_start)
            shutil.copyfileobj(src, dst, 1 << 22)


def _value_end(head: bytes, pos: int, kind: int) -> int:
    if kind == STRING:
        return pos + 8 + int(struct.unpack_from("<Q", head, pos)[0])
    if kind != ARRAY:
        return pos + _WIDTHS[kind]
    element, n = struct.unpack_from("<IQ", head, pos)
    pos += 12
    if element != STRING:
        return pos + int(n) * _WIDTHS[element]
    for _ in range(n):
        pos += 8 + int(struct.unpack_from("<Q", head, pos)[0])
    return pos
