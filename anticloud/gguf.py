"""A bounded pre-parse of GGUF files, run before llama.cpp sees a byte.

llama.cpp has had heap overflows from crafted GGUF headers (CVE-2024-21802, CVE-2024-23605,
CVE-2025-53630, CVE-2026-27940). This reader checks the header, the metadata and the tensor
table against policy limits and refuses anything llama.cpp's own loader would have to trust:

* the magic ``GGUF`` and version 2 or 3;
* the whole header (metadata and tensor table) and its tensor and metadata counts, string
  lengths and array lengths within the policy's limits;
* known value types only, no nested arrays, keys non-empty and unique, UTF-8 strings;
* ``general.alignment``, if present, a uint32 power of two;
* every tensor: a unique name, 1 to 4 dimensions, a known ggml type whose block divides the
  first dimension, no element-count overflow, an offset laid out contiguously (as llama.cpp
  requires) and an end inside the file.

It also refuses whatever llama.cpp (ggml/src/gguf.cpp, src/llama-model.cpp) would read
otherwise than this reader does, since a check on a key llama.cpp does not see is no check:

* a NUL byte in any string. llama.cpp compares keys with ``strcmp`` and hands values, array
  items and tensor names on as C strings, so to it ``tokenizer.chat_template\0x`` *is* the
  chat template, and ``gemma3\0x`` is ``gemma3``;
* a tensor name of 64 bytes or more (``GGML_MAX_NAME``);
* a chat template key (``tokenizer.chat_template`` or ``tokenizer.chat_template.NAME``) that
  holds anything but a string: llama.cpp turns a scalar into text and uses it as the template.

Invariants: it never allocates more than ``max_string_bytes`` for one value nor holds more
than ``max_header_bytes`` of the file in all (plus a bounded overhead per key and tensor),
never seeks outside the file, and does work linear in the header it reads. It keeps only what
the appliance needs: the chat templates (Jinja code run at load, CVE-2024-34359), their
hashes, and a few descriptive keys.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from anticloud.errors import GgufError
from ledger import sha3_tag

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
GGML_MAX_NAME = 64  # ggml.h: a tensor name and its terminating NUL fit in 64 bytes
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
_KEPT_KEYS = ("general.architecture", "general.name", "general.file_type", "general.size_label", "general.basename")
# And, for what clients are told of a model (anticloud.modelinfo), every "<arch>.KEY" of these:
_KEPT_SUFFIXES = (".context_length", ".embedding_length", ".block_count", ".pooling_type")

# Metadata value types: (struct format, byte size) for the scalars; 8 is string, 9 is array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

# ggml tensor types: (elements per block, bytes per block), from llama.cpp's gguf-py constants.
_QK_K = 256
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 2 + 2 + _QK_K // 16 + _QK_K // 4), 11: (256, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    12: (256, 2 + 2 + _QK_K // 2 + 12), 13: (256, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
    14: (256, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16), 15: (256, 4 + _QK_K + _QK_K // 8),
    16: (256, 2 + _QK_K // 4), 17: (256, 2 + _QK_K // 4 + _QK_K // 32), 18: (256, 2 + _QK_K // 4 + _QK_K // 8),
    19: (256, 2 + _QK_K // 8 + _QK_K // 16), 20: (32, 18),
    21: (256, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4), 22: (256, 2 + _QK_K // 4 + _QK_K // 16),
    23: (256, 2 + 2 + _QK_K // 2 + _QK_K // 64), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, _QK_K // 8 + _QK_K // 16 + _QK_K // 32), 30: (1, 2), 34: (256, 2 + 4 * 13), 35: (256, 2 + 64),
    39: (32, 17), 40: (64, 36), 41: (128, 18), 42: (64, 18),
}
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class GgufLimits:
    """Policy bounds on what a GGUF header may ask a reader to allocate or walk.

    These are the defaults of the ``[gguf]`` policy section: `anticloud.config` takes them from here.
    """

    max_tensors: int = 65_536
    max_metadata_kv: int = 65_536
    max_string_bytes: int = 1 << 20
    max_array_length: int = 1 << 24
    max_header_bytes: int = 64 << 20


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What the pre-parse learned; chat templates are keyed by their metadata key."""

    version: int
    tensor_count: int
    metadata_count: int
    alignment: int
    data_offset: int
    data_size: int
    chat_templates: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str | int] = field(default_factory=dict)
    parameters: int = 0  # elements in all tensors

    @property
    def template_hashes(self) -> dict[str, str]:
        """``{key: "sha3-256:<hex>"}`` for every chat template."""
        return {k: sha3_tag(v.encode()) for k, v in self.chat_templates.items()}


class _Reader:
    """Sequential little-endian reads that can never run past the end of the file, nor past ``limit``
    (the policy's bound on the header)."""

    def __init__(self, handle: BinaryIO, size: int, limit: int) -> None:
        self.handle, self.size, self.limit, self.pos = handle, size, limit, 0
        self.buffer, self.buffer_start = b"", 0

    def _check(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GgufError(f"truncated: {what} at byte {self.pos} needs {n} bytes, the file ends at {self.size}")
        if self.pos + n > self.limit:  # everything read here is header: this bounds what it all adds up to
            raise GgufError(f"the header runs past byte {self.limit} ({what} at byte {self.pos}), over the policy "
                            f"limit of {self.limit} bytes (gguf.max_header_bytes)")

    def _fill(self, n: int, what: str) -> int:
        """Have the buffer hold the ``n`` bytes at the position; return where they start in it."""
        self._check(n, what)
        offset = self.pos - self.buffer_start
        if offset + n > len(self.buffer):  # refill: the metadata is read in blocks, not byte by byte
            self.handle.seek(self.pos)
            self.buffer, self.buffer_start, offset = self.handle.read(max(n, 1 << 20)), self.pos, 0
            if len(self.buffer) < n:
                raise GgufError(f"truncated: {what} at byte {self.pos}: the file changed while it was read")
        return offset

    def take(self, n: int, what: str) -> bytes:
        offset = self._fill(n, what)
        self.pos += n
        return self.buffer[offset:offset + n]

    def skip(self, n: int, what: str) -> None:
        self._check(n, what)
        self.pos += n

    def string_items(self, count: int, limit: int, label: str) -> None:
        """Walk an array's ``count`` strings: each ``limit`` bytes at most, none holding a NUL byte
        (llama.cpp reads array items as C strings too). A vocabulary has hundreds of thousands of
        items, so they are scanned in place in the buffered block; an item across its edge has
        `_fill` refill the block from it, which also checks the bounds."""
        done = 0
        while done < count:
            buffer, offset = self.buffer, self.pos - self.buffer_start
            end = min(len(buffer), self.limit - self.buffer_start)
            while done < count and offset + 8 <= end:
                n = _U64.unpack_from(buffer, offset)[0]
                if n > limit:
                    raise GgufError(f"{label}[{done}] is {n} bytes, over the policy limit of {limit}")
                if offset + 8 + n > end:
                    break
                if buffer.find(0, offset + 8, offset + 8 + n) >= 0:
                    raise GgufError(f"{label}[{done}] holds a NUL byte; llama.cpp would read it only up to there")
                offset += 8 + n
                done += 1
            self.pos = self.buffer_start + offset
            if done < count:  # the next item runs past the block
                n = _U64.unpack_from(self.buffer, self._fill(8, f"the length of {label}[{done}]"))[0]
                if n <= limit:  # (a longer one is refused by the scan above)
                    self._fill(8 + n, f"{label}[{done}]")

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack("<Q", self.take(8, what))[0]
        return value

    def string(self, what: str, limit: int) -> str:
        length = self.u64(f"{what} length")
        if length > limit:
            raise GgufError(f"{what} is {length} bytes, over the policy limit of {limit}")
        raw = self.take(length, what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GgufError(f"{what} at byte {self.pos - length} is not UTF-8") from None
        if "\0" in text:
            raise GgufError(f"{what} {_q(text)} holds a NUL byte; llama.cpp would read {_q(text.partition(chr(0))[0])} "
                            "(its strings end at the first NUL)")
        return text


def inspect(handle: BinaryIO, limits: GgufLimits | None = None) -> GgufInfo:
    """Check an open GGUF file from its current handle; raise GgufError naming the first problem."""
    limits = limits or GgufLimits()
    size = os.fstat(handle.fileno()).st_size
    r = _Reader(handle, size, limits.max_header_bytes)
    version, n_tensors, n_kv = _header(r, limits)
    alignment, templates, kept = _metadata(r, n_kv, limits)
    tensors = [_tensor_info(r, i, limits) for i in range(n_tensors)]
    data_offset = _pad(r.pos, alignment) if n_tensors else r.pos
    end = _check_tensor_layout([(name, span) for name, span, _ in tensors], data_offset, alignment, size)
    return GgufInfo(version, n_tensors, n_kv, alignment, data_offset, end, templates, kept,
                    sum(elements for _, _, elements in tensors))


def _header(r: _Reader, limits: GgufLimits) -> tuple[int, int, int]:
    """The magic, and (version, tensor count, metadata count) within the policy's limits."""
    if r.take(4, "magic") != MAGIC:
        raise GgufError("not a GGUF file (bad magic)")
    version = r.u32("version")
    if version not in (2, 3):
        raise GgufError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.u64("tensor count"), r.u64("metadata count")
    if n_tensors > limits.max_tensors:
        raise GgufError(f"{n_tensors} tensors is over the policy limit of {limits.max_tensors}")
    if n_kv > limits.max_metadata_kv:
        raise GgufError(f"{n_kv} metadata entries is over the policy limit of {limits.max_metadata_kv}")
    return version, n_tensors, n_kv


def _metadata(r: _Reader, n_kv: int, limits: GgufLimits) -> tuple[int, dict[str, str], dict[str, str | int]]:
    """Every metadata entry checked; returns the alignment, the chat templates and the kept keys."""
    alignment = DEFAULT_ALIGNMENT
    templates: dict[str, str] = {}
    kept: dict[str, str | int] = {}
    seen: set[str] = set()
    for i in range(n_kv):
        key = r.string(f"metadata key {i}", limits.max_string_bytes)
        if not key or key in seen:
            raise GgufError(f"metadata key {i} {_q(key)} is {'empty' if not key else 'a duplicate'}")
        seen.add(key)
        kind = r.u32(f"type of {_q(key)}")
        is_template = key == CHAT_TEMPLATE_KEY or key.startswith(CHAT_TEMPLATE_KEY + ".")
        if is_template and kind != _STRING:  # llama.cpp would make text of a scalar and use it as the template
            raise GgufError(f"chat template {_q(key)} must hold a string, not value type {kind}")
        if key == "general.alignment" and kind != 4:
            raise GgufError(f"general.alignment must be a uint32 power of two, not value type {kind}")
        if kind == _ARRAY:
            _skip_array(r, key, limits)
            continue
        value = _value(r, key, kind, limits)
        if is_template:
            templates[key] = str(value)
        if key == "general.alignment":
            if not isinstance(value, int) or value == 0 or value & (value - 1):
                raise GgufError(f"general.alignment must be a uint32 power of two, not {value!r}")
            alignment = value
        if (key in _KEPT_KEYS or key.endswith(_KEPT_SUFFIXES)) and isinstance(value, (str, int)):
            kept[key] = value
    return alignment, templates, kept


def _value(r: _Reader, key: str, kind: int, limits: GgufLimits) -> str | int | float | bool:
    """A string or scalar metadata value of type ``kind``."""
    if kind == _STRING:
        return r.string(f"value of {_q(key)}", limits.max_string_bytes)
    if kind in _SCALARS:
        fmt, width = _SCALARS[kind]
        value: str | int | float | bool = struct.unpack(fmt, r.take(width, f"value of {_q(key)}"))[0]
        return value
    raise GgufError(f"metadata {_q(key)} has unknown value type {kind}")


def _check_tensor_layout(tensors: list[tuple[str, tuple[int, int]]], data_offset: int, alignment: int,
                         size: int) -> int:
    """Tensors named once, packed in order without overlap or gap, inside the file; returns the data's end."""
    names = [name for name, _ in tensors]
    if len(set(names)) != len(names):
        raise GgufError("two tensors have the same name")
    expected = 0
    for name, (offset, nbytes) in tensors:
        if offset != expected:
            raise GgufError(f"tensor {_q(name)} is at data offset {offset}, expected {expected} (overlap or gap)")
        if data_offset + offset + nbytes > size:
            raise GgufError(f"tensor {_q(name)} ends at byte {data_offset + offset + nbytes}, past the end at {size}")
        expected = _pad(offset + nbytes, alignment)
    return expected


def _skip_array(r: _Reader, key: str, limits: GgufLimits) -> None:
    kind, length = r.u32(f"element type of {_q(key)}"), r.u64(f"length of {_q(key)}")
    if length > limits.max_array_length:
        raise GgufError(f"array {_q(key)} has {length} elements, over the policy limit of {limits.max_array_length}")
    if kind == _STRING:
        r.string_items(length, limits.max_string_bytes, _q(key))
    elif kind in _SCALARS:
        r.skip(length * _SCALARS[kind][1], f"elements of {_q(key)}")
    else:
        raise GgufError(f"array {_q(key)} has element type {kind}: unknown, or a nested array")


def _tensor_info(r: _Reader, i: int, limits: GgufLimits) -> tuple[str, tuple[int, int], int]:
    """A tensor's name, (offset, bytes) and element count."""
    name = r.string(f"tensor {i} name", limits.max_string_bytes)
    if len(name.encode()) >= GGML_MAX_NAME:
        raise GgufError(f"tensor {i} name {_q(name)} is {len(name.encode())} bytes long, llama.cpp's limit is "
                        f"{GGML_MAX_NAME - 1}")
    n_dims = r.u32(f"tensor {_q(name)} dimension count")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GgufError(f"tensor {_q(name)} has {n_dims} dimensions (1 to {MAX_DIMS})")
    dims = [r.u64(f"tensor {_q(name)} dimension {d}") for d in range(n_dims)]
    elements = 1
    for d in dims:
        elements *= d
        if d > _INT64_MAX or elements > _INT64_MAX:
            raise GgufError(f"tensor {_q(name)} shape {dims} overflows")
    kind = r.u32(f"tensor {_q(name)} type")
    if kind not in GGML_TYPES:
        raise GgufError(f"tensor {_q(name)} has unknown ggml type {kind}")
    block, width = GGML_TYPES[kind]
    if dims[0] % block:
        raise GgufError(f"tensor {_q(name)} first dimension {dims[0]} is not a multiple of its block size {block}")
    return name, (r.u64(f"tensor {_q(name)} offset"), elements // block * width), elements


def _q(text: str) -> str:
    """A name from the file, fit for a one-line message: escaped (no newlines or terminal codes), bounded."""
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
