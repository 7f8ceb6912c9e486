"""The llama.cpp engine on the real model: the lean loop matches llama-cpp-python's own, token for token,
grammar or none, output under a grammar always fits its schema, its failures are the package's errors
(PromptTooLong, EngineError), it renders chats with the very template the pre-parse found, or
refuses to load (LoadRefused), and it embeds on the generation's own context, leaving generation
as it was."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from anticloud.engines import ChatTemplate, Done, LoadedModel, LoadSpec, Params
from anticloud.engines.llama import EMBED_PROMPT, LlamaEngine, last_hidden_state
from anticloud.errors import EngineError, LoadRefused, PromptTooLong, Unsupported
from anticloud.gguf import inspect
from anticloud.structured import MAX_REPEAT, any_json_object, from_schema
from tests.gguf_builder import STRING, UINT32, kv, rewrite

pytestmark = pytest.mark.slow
PROMPT = "Three reasons a hospital keeps its language model on an isolated computer:\n1."


@pytest.fixture(scope="module")
def model(gemma_path: Path) -> Iterator[LoadedModel]:
    loaded = LlamaEngine().load(LoadSpec("gemma3-270m", str(gemma_path), 1024, 2, 0,
                                         {"general.architecture": "gemma3"}))
    yield loaded
    loaded.unload()


def run(model: LoadedModel, params: Params, cancelled: object = lambda: False) -> tuple[str, Done | None]:
    pieces = list(model.generate(PROMPT, params, cancelled))  # type: ignore[arg-type]
    done = pieces[-1] if pieces and isinstance(pieces[-1], Done) else None
    return "".join(p for p in pieces if isinstance(p, str)), done


def test_greedy_output_equals_llama_cpp_pythons_own_loop(model: LoadedModel) -> None:
    reference = model.llm.create_completion(PROMPT, max_tokens=48, temperature=0)  # type: ignore[attr-defined]
    text, done = run(model, Params(temperature=0, num_predict=48, repeat_penalty=1.0))
    assert text == reference["choices"][0]["text"]
    assert done is not None and done.completion_tokens == 48 and done.done_reason == "length"
    assert done.prompt_tokens == model.count_tokens(PROMPT)


def test_penalties_match_llama_cpp_pythons_own_sampling(model: LoadedModel) -> None:
    """Greedy, so the penalties alone decide: the lean loop applies them as llama-cpp-python does."""
    penalised = Params(temperature=0, num_predict=48, repeat_penalty=1.0, frequency_penalty=1.5,
                       presence_penalty=0.5, repeat_last_n=64)
    plain, _ = run(model, Params(temperature=0, num_predict=48, repeat_penalty=1.0))
    text, _ = run(model, penalised)
    reference = model.llm.create_completion(PROMPT, max_tokens=48, temperature=0,  # type: ignore[attr-defined]
                                            frequency_penalty=1.5, presence_penalty=0.5, repeat_penalty=1.0)
    assert text == reference["choices"][0]["text"]
    assert text != plain, "penalties that change nothing were not applied"


def test_a_stop_string_ends_the_text_before_it(model: LoadedModel) -> None:
    text, done = run(model, Params(temperature=0, num_predict=64, stop=("2.",)))
    assert done is not None and done.done_reason == "stop"
    assert "2." not in text and text.strip()


def test_seeded_sampling_is_reproducible(model: LoadedModel) -> None:
    params = Params(temperature=0.9, top_k=40, top_p=0.9, min_p=0.05, seed=1234, num_predict=24)
    assert run(model, params)[0] == run(model, params)[0]


def test_cancelling_stops_within_one_token(model: LoadedModel) -> None:
    produced: list[str] = []
    stream = model.generate(PROMPT, Params(temperature=0, num_predict=64), lambda: len(produced) >= 3)
    for piece in stream:
        assert isinstance(piece, str), "a cancelled generation ends without its Done"
        produced.append(piece)
    assert len(produced) == 3


def test_chats_go_through_the_sandboxed_formatter(model: LoadedModel) -> None:
    pieces = list(model.generate([{"role": "user", "content": "Hello"}], Params(num_predict=4), lambda: False))
    assert isinstance(pieces[-1], Done) and pieces[-1].completion_tokens <= 4


def test_a_chat_too_long_once_formatted_is_prompt_too_long(model: LoadedModel) -> None:
    chat = [{"role": "user", "content": "hi"}] * 300  # its text alone is 600 tokens: it fits 1024
    assert model.count_tokens("\n".join(m["content"] for m in chat)) < 1024
    with pytest.raises(PromptTooLong, match=r"the formatted chat is [0-9]+ tokens; the context holds 1024"):
        list(model.generate(chat, Params(num_predict=4), lambda: False))


def test_num_ctx_bounds_prompt_and_reply_in_both_loops(model: LoadedModel) -> None:
    prompt_tokens = model.count_tokens(PROMPT)
    _, done = run(model, Params(temperature=0, num_predict=50, num_ctx=prompt_tokens + 3))
    assert done is not None and done.completion_tokens == 3 and done.done_reason == "length"
    with pytest.raises(PromptTooLong, match=rf"the window asked for \(num_ctx\) holds {prompt_tokens}"):
        run(model, Params(num_ctx=prompt_tokens))
    chat = [{"role": "user", "content": "Name three rivers of Europe."}]
    whole = list(model.generate(chat, Params(temperature=0, num_predict=40), lambda: False))
    window = whole[-1].prompt_tokens + 4  # type: ignore[union-attr]
    cut = list(model.generate(chat, Params(temperature=0, num_predict=40, num_ctx=window), lambda: False))
    assert isinstance(cut[-1], Done) and cut[-1].done_reason == "length" and cut[-1].completion_tokens <= 4
    assert "".join(p for p in whole if isinstance(p, str)).startswith("".join(p for p in cut if isinstance(p, str)))
    with pytest.raises(PromptTooLong, match="the window asked for \\(num_ctx\\) holds"):
        list(model.generate(chat, Params(num_ctx=5), lambda: False))


def test_a_completion_too_long_is_refused_by_the_engine_itself(model: LoadedModel) -> None:
    with pytest.raises(PromptTooLong, match="the context holds 1024"):
        list(model.generate("word " * 1100, Params(num_predict=4), lambda: False))


def test_a_decode_failure_is_an_engine_error(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    real, calls = llama_cpp.llama_decode, [0]

    def fails_on_the_third_token(ctx: object, batch: object) -> int:
        calls[0] += 1
        return -1 if calls[0] == 4 else int(real(ctx, batch))  # the prompt, then tokens 1, 2, 3

    monkeypatch.setattr(llama_cpp, "llama_decode", fails_on_the_third_token)
    pieces: list[object] = []
    with pytest.raises(EngineError, match=r"could not decode token 3 \(llama_decode returned -1\)"):
        pieces.extend(model.generate(PROMPT, Params(temperature=0, num_predict=16), lambda: False))
    monkeypatch.undo()
    assert run(model, Params(temperature=0, num_predict=4))[1] is not None, "the model still works afterwards"


# -- output grammars (anticloud.structured) --------------------------------------------------------

RECORD = {"type": "object", "required": ["name", "age", "role", "skills"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "role": {"enum": ["doctor", "nurse", "porter"]},
    "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3}}}
RECORD_PROMPT = "The nurse on duty tonight, as a JSON record:\n"
CORPUS = [  # every construct the rules accept, each string bounded so that any output ends in the budget
    {"type": "object", "required": ["patient", "scores"], "properties": {
        "patient": {"type": "object", "required": ["id", "admitted"], "properties": {
            "id": {"type": "string", "format": "uuid"}, "admitted": {"type": "string", "format": "date"}}},
        "scores": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}},
    {"type": "object", "required": ["status", "note", "urgent", "pair"], "additionalProperties": False, "properties": {
        "status": {"const": "ok"}, "note": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
        "urgent": {"type": "boolean"},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 8}]}}},
]


@pytest.fixture(scope="module")
def small(smollm2_path: Path) -> Iterator[LoadedModel]:
    """SmolLM2-135M: a sixth of Gemma's vocabulary, so masking it costs a sixth as much."""
    loaded = LlamaEngine().load(spec_of(smollm2_path, 1024))
    yield loaded
    loaded.unload()


def test_greedy_output_under_a_grammar_equals_llama_cpp_pythons_own(small: LoadedModel) -> None:
    """The lean loop masks the vocabulary only when the grammar refuses the unmasked pick; greedy, that
    is the token llama-cpp-python picks with every token masked, so the texts are the same."""
    from llama_cpp.llama_grammar import LlamaGrammar

    output = from_schema(RECORD, "format")
    pieces = list(small.generate(RECORD_PROMPT, Params(temperature=0, num_predict=160, repeat_penalty=1.0,
                                                       grammar=output.grammar), lambda: False))
    text, done = "".join(p for p in pieces if isinstance(p, str)), pieces[-1]
    reference = small.llm.create_completion(  # type: ignore[attr-defined]
        RECORD_PROMPT, max_tokens=160, temperature=0, repeat_penalty=1.0, grammar=LlamaGrammar.from_string(
            output.grammar))
    assert text == reference["choices"][0]["text"]
    assert isinstance(done, Done) and done.done_reason == "stop", "it ends where the grammar is complete"
    Draft202012Validator(RECORD).validate(json.loads(text))


@pytest.mark.parametrize("schema", [RECORD, *CORPUS], ids=["record", "nested", "alternatives"])
def test_sampled_output_under_a_grammar_always_validates(small: LoadedModel, schema: dict[str, Any]) -> None:
    """At temperature 1 over the whole vocabulary: whatever the model draws, the grammar lets through
    only what the schema (formats included) accepts, and the generation ends by itself."""
    params = Params(temperature=1.0, top_k=0, top_p=1.0, seed=7, num_predict=200,
                    grammar=from_schema(schema, "format").grammar)
    pieces = list(small.generate("A JSON document:\n", params, lambda: False))
    text, done = "".join(p for p in pieces if isinstance(p, str)), pieces[-1]
    assert isinstance(done, Done) and done.done_reason == "stop", text
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(json.loads(text))


def test_json_mode_gives_a_json_object_on_both_paths(small: LoadedModel) -> None:
    """Ollama's format "json" and OpenAI's json_object: llama.cpp's own JSON grammar, whose root is an object."""
    grammar = any_json_object().grammar
    for prompt in ("A JSON object describing a cat:\n", [{"role": "user", "content": "Describe a cat in JSON."}]):
        pieces = list(small.generate(prompt, Params(temperature=0, num_predict=240, grammar=grammar), lambda: False))
        done = pieces[-1]
        assert isinstance(done, Done) and done.done_reason == "stop"
        assert isinstance(json.loads("".join(p for p in pieces if isinstance(p, str))), dict)


def test_a_generation_cut_off_under_a_grammar_ends_with_length(model: LoadedModel) -> None:
    output = from_schema(RECORD, "format")
    pieces = list(model.generate(RECORD_PROMPT, Params(temperature=0, num_predict=4, grammar=output.grammar),
                                 lambda: False))
    done = pieces[-1]
    assert isinstance(done, Done) and (done.done_reason, done.completion_tokens) == ("length", 4)
    assert output.check("".join(p for p in pieces if isinstance(p, str))).failed == "json"


def test_a_grammar_llama_cpp_cannot_parse_is_an_engine_error_on_both_paths(model: LoadedModel) -> None:
    for prompt in (PROMPT, [{"role": "user", "content": "Hello"}]):
        with pytest.raises(EngineError, match="could not parse the output grammar"):
            list(model.generate(prompt, Params(num_predict=4, grammar='root ::= ("unclosed"'), lambda: False))
    assert run(model, Params(temperature=0, num_predict=4))[1] is not None, "the model still works afterwards"


def test_the_largest_repetitions_the_rules_accept_parse_in_llama_cpp(model: LoadedModel) -> None:
    from llama_cpp import llama_sampler_free

    from anticloud.engines.sampling import grammar_sampler

    long_text = {"type": "string", "minLength": 1, "maxLength": MAX_REPEAT}
    schema = {"type": "object", "properties": {"a": long_text, "b": long_text, "c": {
        "type": "array", "items": long_text, "minItems": 1, "maxItems": MAX_REPEAT}}}
    llama_sampler_free(grammar_sampler(model.llm, from_schema(schema, "format").grammar))  # type: ignore[attr-defined]


# -- embeddings, on the generation's context ------------------------------------------------------

def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embedding_on_the_generation_context_leaves_generation_as_it_was(model: LoadedModel) -> None:
    greedy = Params(temperature=0, num_predict=24, repeat_penalty=1.0)
    before = run(model, greedy)[0]
    texts = ["The cat slept on the warm rug.", "A kitten dozed on the carpet.", "Interest rates rose again in May.",
             "The cat slept on the warm rug."]
    embeddings = list(model.embed(texts, True, lambda: False))
    assert run(model, greedy)[0] == before, "embedding must leave no state behind for generation"
    vectors = [e.vector for e in embeddings]
    assert [len(v) for v in vectors] == [640] * 4 and vectors[0] == vectors[3], "the same text, the same vector"
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]), "a paraphrase is nearer than news"
    wrapped = model.llm.tokenize(EMBED_PROMPT[0].encode(), add_bos=True)  # type: ignore[attr-defined]
    assert embeddings[0].tokens > len(wrapped) and not embeddings[0].truncated


def test_the_shared_context_gives_the_vector_a_context_made_for_embeddings_gives(model: LoadedModel,
                                                                                  gemma_path: Path) -> None:
    """The weights are loaded once: llama.cpp switched to embeddings on the generation's context gives
    what llama-cpp-python's own embedding context (last-token pooling) gives, for the same tokens."""
    import llama_cpp
    from llama_cpp import Llama

    text = "The air-gapped workstation answers questions about its own ledger."
    own = Llama(model_path=str(gemma_path), n_ctx=256, n_threads=2, embedding=True, verbose=False, flash_attn=True,
                swa_full=False, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST)
    try:
        reference = own.embed(text)
    finally:
        own.close()
    tokens = model.llm.tokenize(text.encode(), add_bos=True)  # type: ignore[attr-defined]
    shared = last_hidden_state(model.llm, tokens)  # type: ignore[attr-defined]
    assert shared == pytest.approx(reference, rel=1e-3, abs=1e-3)


def test_an_input_too_long_is_cut_to_the_context_or_refused_before_any_decoding(
        model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    long = "word " * 1100  # the context holds 1024
    cut, short = model.embed([long, "short"], True, lambda: False)
    assert (cut.tokens, cut.truncated, short.truncated) == (1024, True, False)
    import llama_cpp

    decoded: list[object] = []

    def decode(ctx: object, batch: object) -> int:
        decoded.append(batch)
        return 0

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    with pytest.raises(PromptTooLong, match=r"an input is 110[0-9] tokens; with the [0-9]+ of the embedding prompt, "
                                            "the context holds 1024"):
        model.embed(["short", long], False, lambda: False)
    assert decoded == [], "refused before the first input was decoded"


def test_cancelling_stops_between_two_inputs(model: LoadedModel) -> None:
    done: list[object] = []
    for embedding in model.embed(["one", "two", "three"], True, lambda: len(done) >= 1):
        done.append(embedding)
    assert len(done) == 1


def test_a_model_that_declares_a_pooling_type_is_not_embedded_as_a_language_model(gemma_path: Path,
                                                                                  tmp_path: Path) -> None:
    pooled = tmp_path / "pooled.gguf"  # what an embedding model declares (1: mean)
    rewrite(gemma_path, pooled, lambda entries: [*entries, kv("gemma3.pooling_type", UINT32, 1)])
    assert not LlamaEngine().can_embed({"general.architecture": "gemma3", "gemma3.pooling_type": 1})
    assert LlamaEngine().can_embed({"general.architecture": "gemma3"})
    loaded = LlamaEngine().load(LoadSpec("pooled", str(pooled), 256, 2, 0, {"general.architecture": "gemma3"}))
    try:
        assert loaded.embedding_method is None
        with pytest.raises(Unsupported, match="language models only"):
            loaded.embed(["text"], True, lambda: False)
    finally:
        loaded.unload()


# -- chat templates: the pre-parse's, or none -------------------------------------------------------

# Lines and non-ASCII text, as real templates have: llama.cpp must hand back every byte for the hash to match.
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}<assistant> réponse:\n"


@pytest.fixture(scope="module")
def templated(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma with a chat template of its own, which names none otherwise."""
    path = tmp_path_factory.mktemp("templated") / "templated.gguf"
    rewrite(gemma_path, path, lambda entries: [*entries, kv("tokenizer.chat_template", STRING, TEMPLATE)])
    return path


def spec_of(path: Path, n_ctx: int = 256) -> LoadSpec:
    """What `anticloud.models` hands an engine: the pre-parse of the file, templates and all."""
    with open(path, "rb") as handle:
        info = inspect(handle)
    templates = {k: ChatTemplate(info.template_hashes[k], text) for k, text in info.chat_templates.items()}
    return LoadSpec("templated", str(path), n_ctx, 2, 0, dict(info.metadata), templates)


def test_a_default_chat_template_is_the_one_that_formats_chats(templated: Path) -> None:
    loaded = LlamaEngine().load(spec_of(templated))
    try:
        assert loaded.llm.chat_format == "chat_template.default"  # type: ignore[attr-defined]
        pieces = list(loaded.generate([{"role": "user", "content": "Hello"}], Params(num_predict=2), lambda: False))
        assert isinstance(pieces[-1], Done)
    finally:
        loaded.unload()


@pytest.mark.parametrize("claim", ["another template", "no template"])
def test_templates_llama_cpp_reads_otherwise_than_the_pre_parse_are_refused(templated: Path, claim: str) -> None:
    spec = spec_of(templated)
    other = ChatTemplate("sha3-256:" + "0" * 64, "{{ messages[0]['content'] }}")
    templates = {} if claim == "no template" else {"tokenizer.chat_template": other}
    with pytest.raises(LoadRefused) as info:
        LlamaEngine().load(LoadSpec(spec.name, spec.path, spec.n_ctx, spec.threads, spec.gpu_layers, spec.metadata,
                                    templates))
    message = str(info.value)
    assert "chat templates" in message and "differ from the pre-parse" in message and "\n" not in message
    assert info.value.evidence["llama_cpp"] == {k: t.sha3_256 for k, t in spec.chat_templates.items()}


def test_a_chat_template_jinja_cannot_compile_is_refused_in_one_line(gemma_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    rewrite(gemma_path, broken, lambda entries: [*entries, kv("tokenizer.chat_template", STRING, "{% for %}")])
    with pytest.raises(LoadRefused) as info:
        LlamaEngine().load(spec_of(broken))
    message = str(info.value)
    assert message.startswith("the chat template tokenizer.chat_template of templated is not valid Jinja")
    assert "\n" not in message


# The single-stream costs of issue 16: what each request does to the KV cache, to the tokenizer and to
# llama_decode, counted on the low-level calls themselves (the times are in tools/bench/, not here).

LONG_PROMPT = "Write a long letter to the hospital's board about keeping patient records offline.\n" * 6


def test_requests_in_a_row_answer_as_each_would_alone(model: LoadedModel, gemma_path: Path) -> None:
    """A short prompt after a long one reuses cells that still hold the long one's keys and values
    (the cache's metadata is cleared, not its data): the mask must hide them, and the answers match
    those of a freshly loaded model."""
    greedy = Params(temperature=0, num_predict=24, repeat_penalty=1.0)
    short_prompt = "The capital of France is"
    in_a_row = [run_prompt(model, prompt, greedy) for prompt in (LONG_PROMPT, short_prompt, LONG_PROMPT)]
    alone = []
    for prompt in (LONG_PROMPT, short_prompt):
        fresh = LlamaEngine().load(LoadSpec("gemma3-270m", str(gemma_path), 1024, 2, 0,
                                            {"general.architecture": "gemma3"}))
        try:
            alone.append(run_prompt(fresh, prompt, greedy))
        finally:
            fresh.unload()
    assert in_a_row == [alone[0], alone[1], alone[0]]
    assert alone[0] != alone[1] and all(alone)


def run_prompt(model: LoadedModel, prompt: str, params: Params) -> str:
    return "".join(p for p in model.generate(prompt, params, lambda: False) if isinstance(p, str))


def test_a_request_frees_its_own_cells_without_zeroing_the_cache(model: LoadedModel,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Its sequence's cells are marked free (llama_memory_seq_rm) before and after it; nothing zeroes
    the buffers (llama_memory_clear with data=True), which costs milliseconds and changes no output."""
    import llama_cpp

    calls: list[tuple[str, Any]] = []
    real_clear, real_rm = llama_cpp.llama_memory_clear, llama_cpp.llama_memory_seq_rm

    def clear(memory: Any, data: bool) -> None:
        calls.append(("clear", data))
        real_clear(memory, data)

    def seq_rm(memory: Any, seq: int, p0: int, p1: int) -> bool:
        calls.append(("seq_rm", (seq, p0, p1)))
        return bool(real_rm(memory, seq, p0, p1))

    monkeypatch.setattr(llama_cpp, "llama_memory_clear", clear)
    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", seq_rm)
    run(model, Params(temperature=0, num_predict=4))
    assert calls == [("seq_rm", (0, -1, -1))] * 2


def test_a_counted_completion_is_tokenized_once(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller counts the prompt before recording it (anticloud.inference), then generates it."""
    calls: list[bytes] = []
    real = model.llm.tokenize  # type: ignore[attr-defined]

    def spy(text: bytes, *args: Any, **kwargs: Any) -> list[int]:
        calls.append(text)
        return real(text, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(model.llm, "tokenize", spy)  # type: ignore[attr-defined]
    counted = "A prompt counted, then generated:\n1."
    length = model.count_tokens(counted)
    pieces = list(model.generate(counted, Params(temperature=0, num_predict=2), lambda: False))
    assert calls == [counted.encode()]
    assert isinstance(pieces[-1], Done) and pieces[-1].prompt_tokens == length
    run_prompt(model, "Another prompt", Params(temperature=0, num_predict=2))  # not the one counted: tokenized
    assert calls == [counted.encode(), b"Another prompt"]


@pytest.mark.parametrize("num_predict", [1, 2, 9])
def test_n_tokens_cost_the_prompt_s_decode_and_n_minus_1_more(model: LoadedModel, monkeypatch: pytest.MonkeyPatch,
                                                              num_predict: int) -> None:
    """The first token comes from the prompt's logits and each later one from its predecessor's
    decode; decoding the last token would compute logits nobody reads."""
    import llama_cpp

    decodes: list[int] = []
    real = llama_cpp.llama_decode

    def spy(ctx: Any, batch: Any) -> int:
        decodes.append(batch.n_tokens)
        return real(ctx, batch)  # type: ignore[no-any-return]

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)
    _, done = run(model, Params(temperature=0, num_predict=num_predict, repeat_penalty=1.0))
    assert done is not None and done.done_reason == "length" and done.completion_tokens == num_predict
    assert decodes == [done.prompt_tokens] + [1] * (num_predict - 1)
