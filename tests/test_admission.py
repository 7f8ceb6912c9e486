"""The admission rules, as the pure function both import and load call: documents in, verdict or
refusal with its evidence out; no file, no ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anticloud.admission import admit, the_weights
from anticloud.config import Policy
from anticloud.errors import AdmissionError, BundleError, ModelError, SignatureError
from anticloud.gguf import GgufInfo, GgufLimits
from anticloud.manifest import FileEntry, Signature, TemplateEntry, new_manifest, signatures_bytes
from ledger import key_id_of
from ledger.checkpoint import raw_public_key
from ledger.record import sha3_tag

KEY = Ed25519PrivateKey.generate()
KEY_ID = key_id_of(raw_public_key(KEY.public_key()))
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
TEMPLATE_SHA = sha3_tag(TEMPLATE.encode())
WEIGHTS = FileEntry("model.gguf", 1000, "sha3-256:" + "a" * 64)
README = FileEntry("README.txt", 10, "sha3-256:" + "b" * 64)


def policy(pinned: tuple[str, ...] = (TEMPLATE_SHA,), min_signatures: int = 1) -> Policy:
    return Policy(min_signatures, 1 << 30, GgufLimits(), True, frozenset(pinned))


def trusted(key_id: str) -> tuple[bytes | None, bool]:
    return (raw_public_key(KEY.public_key()), False) if key_id == KEY_ID else (None, False)


def documents(files: tuple[FileEntry, ...] = (WEIGHTS, README), templates: tuple[TemplateEntry, ...] = (),
              expires: datetime | None = None) -> tuple[bytes, bytes]:
    raw = new_manifest("tiny", files, templates, expires).to_bytes()
    return raw, signatures_bytes([Signature(KEY_ID, KEY.sign(raw))])


def found(templates: dict[str, str] | None = None) -> GgufInfo:
    return GgufInfo(3, 1, 1, 32, 64, 1000, templates or {}, {"general.architecture": "test"})


def refusal(raw: bytes, sigs: bytes, rules: Policy, pre_parse: GgufInfo | None = None,
            now: datetime | None = None) -> AdmissionError:
    with pytest.raises(AdmissionError) as info:
        admit(raw, sigs, trusted, rules, pre_parse, now=now)
    assert "\n" not in str(info.value)
    return info.value


def test_a_signed_manifest_of_one_gguf_is_admitted_with_its_evidence() -> None:
    raw, sigs = documents(templates=(TemplateEntry("model.gguf", "tokenizer.chat_template", TEMPLATE_SHA),))
    first = admit(raw, sigs, trusted, policy())
    assert first.weights == WEIGHTS and first.report.accepted == (KEY_ID,) and first.digest == sha3_tag(raw)
    assert first.templates == {"tokenizer.chat_template": TEMPLATE_SHA} and not first.weights_checked
    assert admit(raw, sigs, trusted, policy(), found({"tokenizer.chat_template": TEMPLATE})).weights_checked


def test_its_refusals_are_bundle_errors_at_import_and_model_errors() -> None:
    error = refusal(*documents(files=(README,)), policy())
    assert isinstance(error, BundleError) and isinstance(error, ModelError)
    assert error.evidence == {"rule": "one-gguf", "gguf_files": []}


def test_exactly_one_gguf_file_in_the_words_of_the_bundler_too() -> None:
    second = FileEntry("second.gguf", 5, "sha3-256:" + "c" * 64)
    error = refusal(*documents(files=(WEIGHTS, second)), policy())
    assert str(error) == ("a model is exactly one .gguf file (a split model must be merged first); the bundle holds 2: "
                          "model.gguf, second.gguf")
    with pytest.raises(AdmissionError, match="the bundle holds 2"):
        the_weights(["model.gguf", "second.gguf"])


def test_a_template_declared_for_another_file_is_refused() -> None:
    error = refusal(*documents(templates=(TemplateEntry("README.txt", "tokenizer.chat_template", TEMPLATE_SHA),)),
                    policy())
    assert "is declared for README.txt, which is not the model's .gguf file" in str(error)
    assert error.evidence["template_file"] == "README.txt"


def test_an_unpinned_template_is_refused_on_the_manifest_alone() -> None:
    raw, sigs = documents(templates=(TemplateEntry("model.gguf", "tokenizer.chat_template", TEMPLATE_SHA),))
    error = refusal(raw, sigs, policy(pinned=()))
    assert f"({TEMPLATE_SHA}) is not pinned by the policy" in str(error)
    relaxed = Policy(1, 1 << 30, GgufLimits(), False, frozenset())
    assert admit(raw, sigs, trusted, relaxed).templates == {"tokenizer.chat_template": TEMPLATE_SHA}


def test_templates_found_must_be_those_declared() -> None:
    raw, sigs = documents(templates=(TemplateEntry("model.gguf", "tokenizer.chat_template", TEMPLATE_SHA),))
    error = refusal(raw, sigs, policy(), found({"tokenizer.chat_template": TEMPLATE + " ",
                                                 "tokenizer.chat_template.tool_use": "x"}))
    assert str(error) == ("the chat templates of model.gguf differ from those the manifest declares "
                          "(undeclared: 'tokenizer.chat_template.tool_use'; different: 'tokenizer.chat_template')")
    assert error.evidence["declared"] == {"tokenizer.chat_template": TEMPLATE_SHA}
    assert "missing: 'tokenizer.chat_template'" in str(refusal(raw, sigs, policy(), found()))


def test_expiry_is_judged_at_the_time_given() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    raw, sigs = documents(expires=expires)
    admit(raw, sigs, trusted, policy(), now=expires - timedelta(seconds=1))
    error = refusal(raw, sigs, policy(), now=expires)
    assert str(error) == "the manifest of tiny expired at 2030-01-01T00:00:00.000000Z"


def test_signatures_come_first_and_carry_their_report() -> None:
    raw, sigs = documents(files=(README,))  # a broken layout, but unsigned content is not looked at
    with pytest.raises(SignatureError, match="not a trusted key") as info:
        admit(raw, sigs, lambda key_id: (None, False), policy())
    assert info.value.report.rejected == ((KEY_ID, "not a trusted key"),)  # type: ignore[attr-defined]
    with pytest.raises(SignatureError, match="policy requires 2"):
        admit(*documents(), trusted, policy(min_signatures=2))
