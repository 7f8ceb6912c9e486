"""Write small, valid GGUF files for tests, field by field, so tests can break any one field."""

from __future__ import annotations

import struct
from typing import Any

STRING, ARRAY, UINT32, FLOAT32 = 8, 9, 4, 6


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
