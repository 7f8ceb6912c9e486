"""The GGUF pre-parse: the real model passes; every hostile header gets a clear refusal; fuzzing finds nothing."""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anticloud.errors import GgufError
from anticloud.gguf import GgufInfo, GgufLimits, inspect
from tests.gguf_builder import ARRAY, STRING, UINT32, build, kv

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def check(tmp_path: Path, blob: bytes, limits: GgufLimits | None = None) -> GgufInfo:
    path = tmp_path / "m.gguf"
    path.write_bytes(blob)
    with open(path, "rb") as handle:
        return inspect(handle, limits)


def test_the_real_gemma_model_passes(gemma_path: Path) -> None:
    with open(gemma_path, "rb") as handle:
        info = inspect(handle)
    assert (info.version, info.tensor_count, info.alignment) == (3, 236, 32)
    assert info.data_offset + info.data_size == gemma_path.stat().st_size
    assert info.metadata["general.architecture"] == "gemma3"


def test_chat_templates_are_found_and_hashed(tmp_path: Path) -> None:
    blob = build([kv("tokenizer.chat_template", STRING, TEMPLATE), kv("tokenizer.chat_template.tool_use", STRING, "x"),
                  kv("general.alignment", UINT32, 64)], alignment=64)
    info = check(tmp_path, blob)
    assert info.chat_templates["tokenizer.chat_template"] == TEMPLATE
    assert set(info.template_hashes) == {"tokenizer.chat_template", "tokenizer.chat_template.tool_use"}
    assert info.alignment == 64


def u64_at(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<Q", value) + blob[offset + 8:]


GOOD = build()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"GGUX" + GOOD[4:], "bad magic"),
        (GOOD[:4] + struct.pack("<I", 1) + GOOD[8:], "version 1"),
        (GOOD[:4] + struct.pack("<I", 4) + GOOD[8:], "version 4"),
        (u64_at(GOOD, 8, 2**63), "tensors is over the policy limit"),
        (u64_at(GOOD, 16, 10**9), "metadata entries is over the policy limit"),
        (u64_at(GOOD, 24, 2**62), "over the policy limit"),  # the first key's length
        (GOOD[:30], "truncated"),
        (build([kv("a", STRING, "x"), kv("a", STRING, "y")]), "duplicate"),
        (build([kv("", STRING, "x")]), "empty"),
        (build([b"\x01\0\0\0\0\0\0\0a" + struct.pack("<I", 13)]), "unknown value type 13"),
        (build([b"\x01\0\0\0\0\0\0\0a" + struct.pack("<IIQ", ARRAY, ARRAY, 1)]), "nested array"),
        (build([b"\x01\0\0\0\0\0\0\0a" + struct.pack("<IIQ", ARRAY, UINT32, 2**40)]), "elements, over the policy"),
        (build([kv("general.alignment", UINT32, 48)]), "power of two"),
        (build([kv("general.alignment", UINT32, 0)]), "power of two"),
        (build([kv("general.alignment", STRING, "32")]), "power of two"),
        (build([kv("bad", STRING, b"\xff\xfe")]), "not UTF-8"),
        (build(tensors=[("w", [8], 0), ("w", [8], 0)]), "same name"),
        (build(tensors=[("w", [1, 1, 1, 1, 1], 0)]), "5 dimensions"),
        (build(tensors=[("w", [2**40, 2**40], 0)]), "overflows"),
        (build(tensors=[("w", [8], 77)]), "unknown ggml type"),
        (build(tensors=[("w", [33], 2)]), "not a multiple of its block size"),
        # What llama.cpp would read differently: its keys and values are C strings, cut at a NUL.
        (build([kv("tokenizer.chat_template\0", STRING, TEMPLATE)]), r"'tokenizer.chat_template\\x00' holds a NUL"),
        (build([kv("general.alignment\0", UINT32, 64)]), "holds a NUL"),
        (build([kv("a", STRING, "x"), kv("a\0b", STRING, "y")]), "holds a NUL"),
        (build([kv("general.architecture", STRING, "gemma3\0llama")]), "NUL byte; llama.cpp would read 'gemma3'"),
        (build([kv("tokens", ARRAY, ["a", "b\0c"], STRING)]), r"'tokens'\[1\] holds a NUL"),
        (build(tensors=[("w\0x", [8], 0)]), "holds a NUL"),
        (build(tensors=[("w" * 64, [8], 0)]), "64 bytes long, llama.cpp's limit is 63"),
        (build([kv("tokenizer.chat_template", UINT32, 7)]), "must hold a string"),
        (build([kv("tokenizer.chat_template.rag", ARRAY, ["{{ x }}"], STRING)]), "must hold a string"),
    ],
)
def test_hostile_headers_are_refused_by_name(tmp_path: Path, blob: bytes, message: str) -> None:
    with pytest.raises(GgufError, match=message):
        check(tmp_path, blob)


def test_tensor_past_the_end_and_overlapping_tensors(tmp_path: Path) -> None:
    with pytest.raises(GgufError, match="past the end"):
        check(tmp_path, build()[:-40])
    blob = build(tensors=[("a", [8], 0), ("b", [8], 0)])
    second_offset = blob.index(b"\x01\0\0\0\0\0\0\0b") + 9 + 4 + 8 + 4  # name, n_dims, dim, type
    with pytest.raises(GgufError, match="overlap or gap"):
        check(tmp_path, u64_at(blob, second_offset, 0))


def test_limits_come_from_policy(tmp_path: Path) -> None:
    blob = build([kv("tokenizer.chat_template", STRING, TEMPLATE)])
    with pytest.raises(GgufError, match="over the policy limit of 10"):
        check(tmp_path, blob, GgufLimits(max_string_bytes=10))


@pytest.mark.parametrize("metadata", [
    [kv(f"tokenizer.chat_template.t{i}", STRING, "x" * (256 << 10)) for i in range(64)],  # 16 MiB of templates
    [kv("tokenizer.ggml.tokens", ARRAY, [""] * (1 << 20), STRING)],  # a million empty strings
], ids=["many large strings", "a million small items"])
def test_the_header_is_bounded_as_a_whole_not_only_string_by_string(tmp_path: Path, metadata: list[bytes]) -> None:
    limits = GgufLimits(max_header_bytes=2 << 20)
    path = tmp_path / "m.gguf"
    path.write_bytes(build(metadata))
    assert path.stat().st_size > 4 * limits.max_header_bytes
    tracemalloc.start()
    try:
        with open(path, "rb") as handle, pytest.raises(GgufError) as info:
            inspect(handle, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"over the policy limit of {limits.max_header_bytes} bytes" in str(info.value)
    assert peak < 2 * limits.max_header_bytes + (2 << 20), f"the pre-parse held {peak} bytes"


@pytest.mark.parametrize("at", [0, 99_999, 250_000, 299_999])
def test_a_nul_in_any_item_of_a_vocabulary_is_found_across_read_blocks(tmp_path: Path, at: int) -> None:
    tokens = [f"tok{i:06d}" for i in range(300_000)]  # 4.5 MB: several of the reader's 1 MiB blocks
    assert check(tmp_path, build([kv("tokenizer.ggml.tokens", ARRAY, tokens, STRING)])).metadata_count == 1
    tokens[at] = "tok\0"
    with pytest.raises(GgufError, match=rf"'tokenizer.ggml.tokens'\[{at}\] holds a NUL byte"):
        check(tmp_path, build([kv("tokenizer.ggml.tokens", ARRAY, tokens, STRING)]))


def test_the_header_bound_lets_the_real_model_through(gemma_path: Path) -> None:
    with open(gemma_path, "rb") as handle:
        data_offset = inspect(handle).data_offset
    assert data_offset < GgufLimits().max_header_bytes // 4
    with open(gemma_path, "rb") as handle, pytest.raises(GgufError, match="header"):
        inspect(handle, GgufLimits(max_header_bytes=data_offset // 2))


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutations_never_crash_hang_or_balloon(tmp_path: Path, data: st.DataObject) -> None:
    base = build([kv("tokenizer.chat_template", STRING, TEMPLATE), kv("general.alignment", UINT32, 32),
                  kv("tokenizer.ggml.tokens", ARRAY, ["a", "bb", "ccc"], STRING)],
                 tensors=[("a", [32, 2], 0), ("b", [64], 1)])
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        how = data.draw(st.sampled_from(["byte", "u64", "cut"]), label="how")
        at = data.draw(st.integers(0, len(blob) - 1), label="at")
        if how == "byte":
            blob[at] = data.draw(st.integers(0, 255), label="value")
        elif how == "u64" and at + 8 <= len(blob):
            blob[at:at + 8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, 2**31, 2**32, 2**63, 2**64 - 1])))
        elif how == "cut":
            del blob[at:]
            if not blob:
                blob += b"G"
    path = tmp_path / "f.gguf"
    path.write_bytes(bytes(blob))
    tracemalloc.start()
    try:
        with open(path, "rb") as handle:
            inspect(handle)
    except GgufError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 8 << 20, f"the pre-parse allocated {peak} bytes"


@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_after_the_magic(blob: bytes) -> None:
    with tempfile.TemporaryFile() as handle:
        handle.write(b"GGUF" + blob)
        handle.seek(0)
        try:
            inspect(handle)
        except GgufError as exc:
            assert str(exc)


def test_what_clients_are_told_of_the_real_models_comes_from_their_headers(gemma_path: Path,
                                                                             smollm2_path: Path) -> None:
    from anticloud.modelinfo import facts

    with open(smollm2_path, "rb") as handle:
        smol = facts(inspect(handle))
    with open(gemma_path, "rb") as handle:
        gemma = facts(inspect(handle))
    assert smol.details() == {"format": "gguf", "family": "llama", "families": ["llama"],
                              "parameter_size": "134.5M", "quantization_level": "Q4_1"}
    assert smol.model_info()["llama.context_length"] == 8192 and smol.chat_template
    assert gemma.architecture == "gemma3" and gemma.quantization == "Q4_K_M" and not gemma.chat_template
    assert 250e6 < gemma.parameters < 300e6 and gemma.model_info()["gemma3.context_length"] == 32768


def test_a_model_trained_to_embed_is_not_offered_for_completion() -> None:
    from anticloud.modelinfo import facts

    header = build([kv("general.architecture", STRING, "bert"), kv("bert.pooling_type", UINT32, 1)])
    with tempfile.TemporaryFile() as handle:
        handle.write(header)
        handle.seek(0)
        described = facts(inspect(handle))
    assert described.capabilities(can_embed=False) == [] and described.capabilities(can_embed=True) == ["embedding"]
