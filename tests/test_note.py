"""C2SP signed notes and cosignatures (ledger.note) against the published vectors and every malformed form.

The vectors under tests/corpus/note/ are copied from the C2SP specifications and from the Go
reference tests (golang.org/x/mod/sumdb/note), each naming its source. The Go tests publish
private keys, so signing with them must reproduce their signatures byte for byte (Ed25519 is
deterministic). The checkpoint, witness and tlog-proof text forms are tested in test_tlog_text.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    COSIGNATURE_V1,
    ED25519,
    NoteError,
    NoteVerdict,
    Vkey,
    add_signature_lines,
    cosign,
    cosigner_vkey,
    ed25519_vkey,
    note_key_id,
    open_note,
    parse_vkey,
    raw_public_key,
    sign_note,
    split_note,
    tree_head_of,
)
from ledger.note import MAX_NOTE_BYTES, MAX_SIGNATURES, cosignature_message

CORPUS = Path(__file__).resolve().parent / "corpus" / "note"
C2SP: dict[str, Any] = json.loads((CORPUS / "c2sp-vectors.json").read_text(encoding="utf-8"))
GO: dict[str, Any] = json.loads((CORPUS / "go-note-vectors.json").read_text(encoding="utf-8"))
TEXT = "example.org/log\n7\n" + base64.b64encode(bytes(range(32))).decode() + "\n"

# Two keys whose Ed25519 vkeys for the name "collide.example" share the key id a4276e9a. Found by a
# birthday search over the seeds SHA-256("collision seed <i>"); see test_a_full_name_and_id_collision.
COLLIDE_NAME, COLLIDE_ID = "collide.example", "a4276e9a"
COLLIDE_SEEDS = (b"collision seed 110527", b"collision seed 138012")


def skey_signer(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Test-only reader of x/mod's signer keys, ``PRIVATE+KEY+name+hex8+base64(0x01 || seed)``,
    checking the key id against the public key the seed derives (as note.NewSigner does)."""
    private, key, name, hex_id, blob = skey.split("+", 4)
    raw = base64.b64decode(blob, validate=True)
    assert (private, key, raw[0], len(raw)) == ("PRIVATE", "KEY", ED25519, 33)
    signer = Ed25519PrivateKey.from_private_bytes(raw[1:])
    assert note_key_id(name, ED25519, raw_public_key(signer.public_key())).hex() == hex_id
    return name, signer


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test key %d" % seed).digest())


def signed_by(text: str, *signers: tuple[str, Ed25519PrivateKey]) -> str:
    note = sign_note(text, *signers[0])
    for name, k in signers[1:]:
        note = add_signature_lines(note, sign_note(text, name, k)[len(text) + 1:])
    return note


def note_of(case: dict[str, Any]) -> bytes | str:
    if "note_repeat" in case:
        r = case["note_repeat"]
        return str(r["head"] + r["line"] * r["times"])
    return base64.b64decode(case["note_b64"]) if "note_b64" in case else str(case["note"])


def pairs(sigs: Any) -> list[list[str]]:
    return [[s.name, s.key_id.hex()] for s in sigs]


# -- the C2SP specifications -------------------------------------------------------------------------


def test_the_signed_note_vkey_example_verifies_its_note() -> None:
    case = C2SP["vkey_example"]
    vkey = parse_vkey(case["vkey"])
    assert (vkey.name, vkey.key_id.hex(), vkey.sig_type) == ("example.com/foo", "530d903a", ED25519)
    assert vkey.encode() == case["vkey"]
    verdict = open_note(case["note"], [vkey])
    assert verdict.ok and verdict.text == case["text"] and pairs(verdict.verified) == [["example.com/foo", "530d903a"]]
    assert not open_note(case["note"].replace("example.", "example!"), [vkey]).ok


def test_the_quasimodo_note_parses_and_its_last_blank_line_separates() -> None:
    case = C2SP["quasimodo"]
    text, lines = split_note(case["note"])
    assert text == case["text"] and "\n\n" in text  # the text's own blank line is not the separator
    assert [line.name for line in lines] == [case["signer"]]
    verdict = open_note(case["note"], [parse_vkey(C2SP["vkey_example"]["vkey"])])
    assert (verdict.ok, verdict.reason, verdict.text) == (False, "no_known_signature", None)
    assert [s.name for s in verdict.unknown] == [case["signer"]]


def test_the_checkpoint_example_parses() -> None:
    case = C2SP["checkpoint"]
    head = tree_head_of(case["note"])
    assert (head.origin, head.size, base64.b64encode(head.root).decode()) == (case["origin"], case["size"],
                                                                               case["root_b64"])
    assert head.text() == split_note(case["note"])[0]
    assert open_note(case["note"], []).reason == "no_known_signature"


def test_the_cosignature_example_parses_and_its_message_is_the_one_published() -> None:
    case = C2SP["cosignature"]
    text, lines = split_note(case["note"])
    witness = next(line for line in lines if line.name == case["cosigner"])
    assert len(witness.signature) == 8 + 64
    assert int.from_bytes(witness.signature[:8], "big") == case["timestamp"]
    assert cosignature_message(text, case["timestamp"]) == case["signed_message"].encode()
    assert [s.name for s in open_note(case["note"], []).unknown] == ["example.com/behind-the-sofa", case["cosigner"]]


def test_the_witness_response_lines_add_to_the_checkpoint() -> None:
    case = C2SP["add_checkpoint"]
    checkpoint = C2SP["checkpoint"]["note"]
    cosigned = add_signature_lines(checkpoint, case["response"])
    _, lines = split_note(cosigned)
    assert [line.name for line in lines] == ["example.com/behind-the-sofa"] + ["witness.example/w1"] * 2 + [
        "witness.example/w2"]
    assert all(len(line.signature) == 8 + 64 for line in lines[1:])  # timestamp and Ed25519 signature
    assert add_signature_lines(cosigned, case["response"]) == cosigned  # lines already there are not repeated


# -- the Go reference tests ----------------------------------------------------------------------------


def test_the_published_private_keys_give_the_published_vkeys() -> None:
    keys = GO["keys"]
    name, peter = skey_signer(keys["peter_skey"])
    assert ed25519_vkey(name, peter.public_key()).encode() == keys["peter_vkey"]
    enoch = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(keys["enoch_seed_hex"]))
    assert ed25519_vkey("EnochRoot", enoch.public_key()).encode() == keys["enoch_vkey"]
    assert parse_vkey(keys["peter_vkey"]) == ed25519_vkey(name, raw_public_key(peter.public_key()))


def test_signing_reproduces_the_published_signatures_byte_for_byte() -> None:
    keys, case = GO["keys"], GO["sign"]
    peter = skey_signer(keys["peter_skey"])
    enoch = ("EnochRoot", Ed25519PrivateKey.from_private_bytes(bytes.fromhex(keys["enoch_seed_hex"])))
    assert sign_note(case["text"], *peter) == case["peter_note"]
    assert signed_by(case["text"], peter, enoch) == case["peter_and_enoch_note"]


@pytest.mark.parametrize("text, name", [("abc", "PeterNeumann"), ("a\tb\n", "PeterNeumann"), ("ok\n", "a+b"),
                                        ("ok\n", "bad name"), ("ok\n", "")])
def test_sign_refuses_what_would_not_be_a_note(text: str, name: str) -> None:
    """TestSign's bad inputs: a text without its final newline, a name with '+' or a space."""
    with pytest.raises(NoteError):
        sign_note(text, name, key(1))
    with pytest.raises(NoteError):
        cosign(text, name, key(1), 1)


@pytest.mark.parametrize("case", GO["open"], ids=lambda c: c["name"])
def test_the_go_open_cases(case: dict[str, Any]) -> None:
    verdict = open_note(note_of(case), [parse_vkey(v) for v in case["known"]])
    assert (verdict.ok, verdict.reason) == (case["ok"], case["reason"]), verdict.detail
    assert pairs(verdict.verified) == case["verified"]
    assert pairs(verdict.unknown) == case["unknown"]
    assert verdict.ok == (verdict.text is not None) and (verdict.ok or verdict.detail)


@pytest.mark.parametrize("case", GO["bad_vkeys"], ids=lambda c: c["why"])
def test_the_go_bad_vkeys_are_refused_for_their_reason(case: dict[str, Any]) -> None:
    with pytest.raises(NoteError, match=case["error"]):
        parse_vkey(case["vkey"])


def vkey_manglings(vkey: str) -> list[str]:
    """TestNewVerifier's manglings: every proper substring, and every byte incremented by one."""
    b = vkey.encode()
    subs = [b[i:j].decode() for i in range(len(b) + 1) for j in range(i + 1, len(b) + 1) if (i, j) != (0, len(b))]
    bumped = [(b[:i] + bytes([b[i] + 1]) + b[i + 1:]).decode() for i in range(len(b))]
    return subs + bumped


def test_every_mangling_of_the_published_vkey_is_refused() -> None:
    manglings = vkey_manglings(GO["keys"]["peter_vkey"])
    assert len(manglings) > 2000
    for mangled in manglings:
        with pytest.raises(NoteError):
            parse_vkey(mangled)


# -- vkeys ----------------------------------------------------------------------------------------------


def test_vkeys_round_trip_and_key_ids_follow_the_spec() -> None:
    pub = raw_public_key(key(1).public_key())
    for make, sig_type in ((ed25519_vkey, ED25519), (cosigner_vkey, COSIGNATURE_V1)):
        vkey = make("example.org/w", pub)
        assert vkey.key_id == hashlib.sha256(b"example.org/w\n" + bytes([sig_type]) + pub).digest()[:4]
        assert parse_vkey(vkey.encode()) == vkey
    # the same key and name under the two types has two ids, so neither can stand for the other
    assert ed25519_vkey("n", pub).key_id != cosigner_vkey("n", pub).key_id


def _vkey(name: str, sig_type: int, public: bytes, hex_id: str | None = None) -> str:
    hex_id = hex_id or note_key_id(name, sig_type, public).hex()
    return f"{name}+{hex_id}+{base64.b64encode(bytes([sig_type]) + public).decode()}"


PUB = raw_public_key(key(2).public_key())
BAD_VKEYS = {
    "no plus at all": ("example.org", "name+keyid+base64key"),
    "one plus": ("example.org+0011aabb", "name+keyid+base64key"),
    "empty name": (_vkey("", 1, PUB), "non-empty"),
    "a space in the name": (_vkey("a b", 1, PUB), "space"),
    "a no-break space in the name": (_vkey("a\u00a0b", 1, PUB), "space"),
    "an ideographic space in the name": (_vkey("a\u3000b", 1, PUB), "space"),
    "a line separator in the name": (_vkey("a\u2028b", 1, PUB), "space"),
    "a control character in the name": (_vkey("a\x7fb\x01", 1, PUB), "control"),
    "uppercase key id": (_vkey("n", 1, PUB, note_key_id("n", 1, PUB).hex().upper()), "lowercase hex"),
    "short key id": (_vkey("n", 1, PUB, "abc"), "8 lowercase hex"),
    "wrong key id": (_vkey("n", 1, PUB, "00000000"), "does not match"),
    "key id of another name": (_vkey("n", 1, PUB, note_key_id("m", 1, PUB).hex()), "does not match"),
    "key id of another type": (_vkey("n", 1, PUB, note_key_id("n", 4, PUB).hex()), "does not match"),
    "empty key": ("n+00000000+", "empty"),
    "not base64": ("n+00000000+AQ*", "not standard base64"),
    "base64 without padding": (_vkey("n", 1, PUB)[:-1], "base64"),
    "non-canonical base64": (_vkey("n", 1, PUB)[:-2] + "V=", "canonical"),
    "ECDSA type": (_vkey("n", 2, PUB), "unsupported signature type 0x02"),
    "ML-DSA type": (_vkey("n", 6, PUB), "unsupported signature type 0x06"),
    "31-byte key": (_vkey("n", 1, PUB[:31]), "32 bytes, not 31"),
    "33-byte key": (_vkey("n", 4, PUB + b"\0"), "32 bytes, not 33"),
}


@pytest.mark.parametrize("name", BAD_VKEYS)
def test_every_malformed_vkey_is_refused_with_its_reason(name: str) -> None:
    text, reason = BAD_VKEYS[name]
    with pytest.raises(NoteError, match=re.escape(reason)) as caught:
        parse_vkey(text)
    assert "\n" not in str(caught.value)


def test_a_vkey_cannot_be_built_inconsistent() -> None:
    good = ed25519_vkey("n", PUB)
    for args in (("n", b"\0\0\0\0", ED25519, PUB), ("n", good.key_id, 2, PUB), ("n", good.key_id, True, PUB),
                 ("n+", good.key_id, ED25519, PUB), ("n", good.key_id, ED25519, PUB[:31])):
        with pytest.raises(NoteError):
            Vkey(*args)


# -- opening: the rules of signed-note and tlog-cosignature --------------------------------------------

A, B = ("a.example/log", key(10)), ("b.example/log", key(11))
VA, VB = ed25519_vkey(A[0], A[1].public_key()), ed25519_vkey(B[0], B[1].public_key())
W = ("w.example/witness", key(12))
VW = cosigner_vkey(W[0], W[1].public_key())


def test_unknown_signatures_are_listed_and_ignored() -> None:
    note = signed_by(TEXT, A, B)
    verdict = open_note(note, [VA])
    assert verdict.ok and verdict.text == TEXT
    assert pairs(verdict.verified) == [[VA.name, VA.key_id.hex()]]
    assert pairs(verdict.unknown) == [[VB.name, VB.key_id.hex()]]
    assert open_note(note, [VB]).ok and pairs(open_note(note, [VA, VB]).verified) == pairs([VA, VB])
    alone = open_note(note, [])
    assert (alone.ok, alone.reason, len(alone.unknown)) == (False, "no_known_signature", 2)


def test_a_wrong_signature_from_a_known_key_fails_the_note() -> None:
    forged = TEXT + "\n" + sign_note(TEXT.replace("7", "8"), *A)[len(TEXT) + 1:]
    verdict = open_note(forged, [VA])
    assert (verdict.ok, verdict.reason) == (False, "bad_signature") and VA.name in (verdict.detail or "")
    # a good signature from another known key does not rescue it: the whole note is refused
    assert open_note(add_signature_lines(forged, sign_note(TEXT, *B)[len(TEXT) + 1:]), [VA, VB]).reason == \
        "bad_signature"


def test_a_known_keys_second_line_is_verified_too() -> None:
    """x/mod skips a known key's repeated lines unverified; the spec says a known key's bad signature fails."""
    good = sign_note(TEXT, *A)
    bad_line = sign_note(TEXT + "x\n", *A)[len(TEXT) + 3:]
    assert open_note(add_signature_lines(good, good[len(TEXT) + 1:]), [VA]).ok  # the same line twice
    assert open_note(add_signature_lines(good, bad_line), [VA]).reason == "bad_signature"


def test_a_cosignature_verifies_and_reports_its_time() -> None:
    note = add_signature_lines(sign_note(TEXT, *A), cosign(TEXT, *W, 1_700_000_000))
    verdict = open_note(note, [VA, VW])
    assert verdict.ok
    assert [(s.name, s.sig_type, s.timestamp) for s in verdict.verified] == [
        (A[0], ED25519, None), (W[0], COSIGNATURE_V1, 1_700_000_000)]
    only_witness = open_note(note, [VW])
    assert only_witness.ok and pairs(only_witness.unknown) == [[VA.name, VA.key_id.hex()]]


def test_a_cosignature_whose_timestamp_was_altered_fails() -> None:
    line = cosign(TEXT, *W, 1_700_000_000)
    raw = base64.b64decode(line.split(" ")[2])
    altered = raw[:4] + (1_700_000_001).to_bytes(8, "big") + raw[12:]
    note = TEXT + "\n" + f"— {W[0]} {base64.b64encode(altered).decode()}\n"
    assert open_note(TEXT + "\n" + line, [VW]).ok
    verdict = open_note(note, [VW])
    assert (verdict.ok, verdict.reason) == (False, "bad_signature")


def test_cosignatures_of_other_shapes_fail() -> None:
    ts, kid = 2**63, VW.key_id
    huge = kid + ts.to_bytes(8, "big") + W[1].sign(cosignature_message(TEXT, ts))  # validly signed, out of range
    short = kid + (5).to_bytes(8, "big") + W[1].sign(cosignature_message(TEXT, 5))[:63]
    for blob, detail in ((huge, "above 2^63-1"), (short, "not a timestamp and 64 bytes")):
        verdict = open_note(TEXT + f"\n— {W[0]} {base64.b64encode(blob).decode()}\n", [VW])
        assert verdict.reason == "bad_signature" and detail in (verdict.detail or "")
    with pytest.raises(NoteError):
        cosign(TEXT, *W, 2**63)
    with pytest.raises(NoteError):
        cosign(TEXT, *W, -1)


def test_a_cosignature_from_the_future_is_refused_when_now_is_given() -> None:
    note = TEXT + "\n" + cosign(TEXT, *W, 1_700_000_000)
    assert open_note(note, [VW], now=1_700_000_000).ok
    verdict = open_note(note, [VW], now=1_699_999_999)
    assert (verdict.ok, verdict.reason) == (False, "future_timestamp")


def test_an_ed25519_key_and_a_cosigner_key_do_not_stand_for_each_other() -> None:
    same = cosigner_vkey(A[0], A[1].public_key())  # A's key and name as a cosigner: another key id
    assert open_note(sign_note(TEXT, *A), [same]).reason == "no_known_signature"
    assert open_note(TEXT + "\n" + cosign(TEXT, *A, 5), [VA]).reason == "no_known_signature"


def test_sharing_a_name_or_an_id_but_not_both_makes_a_key_unknown() -> None:
    """signed-note: 'MUST ignore signatures from unknown keys, even if they share a name or ID (but not both)'."""
    same_name = ("a.example/log", key(20))  # A's name, another key, so another id
    line = sign_note(TEXT, *same_name)[len(TEXT) + 1:]
    assert open_note(TEXT + "\n" + line, [VA]).reason == "no_known_signature"
    raw = base64.b64decode(sign_note(TEXT, "other.example", A[1])[len(TEXT) + 1:].split(" ")[2])
    same_id = f"— other.example {base64.b64encode(VA.key_id + raw[4:]).decode()}\n"  # A's id, another name
    verdict = open_note(TEXT + "\n" + same_id, [VA])
    assert verdict.reason == "no_known_signature" and pairs(verdict.unknown) == [["other.example", VA.key_id.hex()]]


def test_a_full_name_and_id_collision_is_verified_against_the_known_key() -> None:
    """signed-note: 'If the key name and ID match a known key, verifiers MUST verify the signature.'
    Two real keys share name and id (a 32-bit birthday search); the note of one fails under the other."""
    k1, k2 = (Ed25519PrivateKey.from_private_bytes(hashlib.sha256(s).digest()) for s in COLLIDE_SEEDS)
    v1, v2 = (ed25519_vkey(COLLIDE_NAME, k.public_key()) for k in (k1, k2))
    assert v1.key_id == v2.key_id == bytes.fromhex(COLLIDE_ID) and v1 != v2
    note = sign_note(TEXT, COLLIDE_NAME, k2)
    assert open_note(note, [v2]).ok
    assert open_note(note, [v1]).reason == "bad_signature"
    assert open_note(note, [v1, v2]).reason == "ambiguous_key"
    assert open_note(note, [v2, v2]).ok  # one key listed twice is still one key


# -- malformed notes ------------------------------------------------------------------------------------

LINE = sign_note(TEXT, *A)[len(TEXT) + 1:]
SIG = LINE.split(" ", 2)[2][:-1]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
BAD_NOTES: dict[str, tuple[Any, str]] = {
    "not a note at all": (12, "bytes or a string"),
    "None": (None, "bytes or a string"),
    "a lone surrogate": (TEXT + "\ud800\n\n" + LINE, "UTF-8"),
    "invalid UTF-8": (TEXT.encode() + b"\xc3\x28\n\n" + LINE.encode(), "UTF-8"),
    "an overlong encoding": (TEXT.encode() + b"\xc0\xaf\n\n" + LINE.encode(), "UTF-8"),
    "an encoded surrogate": (TEXT.encode() + b"\xed\xa0\x80\n\n" + LINE.encode(), "UTF-8"),
    "a carriage return": (TEXT.replace("\n", "\r\n", 1) + "\n" + LINE, "control character"),
    "a tab": (TEXT + "\t\n\n" + LINE, "control character"),
    "a NUL": (TEXT + "\n" + LINE[:-1] + "\0\n", "control character"),
    "no blank line": (TEXT + LINE, "no blank line"),
    "nothing after the blank line": (TEXT + "\n", "no signature lines"),
    "the last line without its newline": (TEXT + "\n" + LINE[:-1], "does not end with a newline"),
    "a hyphen for the em dash": (TEXT + "\n" + LINE.replace("—", "-"), "em dash"),
    "an en dash for the em dash": (TEXT + "\n" + LINE.replace("—", "–"), "em dash"),
    "no space after the dash": (TEXT + "\n" + LINE.replace("— ", "—"), "em dash"),
    "no signature after the name": (TEXT + "\n" + f"— {A[0]}\n", "shorter than a key id"),
    "two spaces before the signature": (TEXT + "\n" + LINE.replace(" ", "  ", 2).replace("—  ", "— "), "base64"),
    "a space at the end": (TEXT + "\n" + LINE[:-1] + " \n", "base64"),
    "a name with '+'": (TEXT + "\n" + LINE.replace(A[0], "a+b"), "'+'"),
    "an empty name": (TEXT + "\n" + f"—  {SIG}\n", "non-empty"),
    "non-canonical base64": (TEXT + "\n" + f"— {A[0]} {SIG[:-2]}{B64[B64.index(SIG[-2]) ^ 1]}=\n", "canonical"),
    "unpadded base64": (TEXT + "\n" + f"— {A[0]} {SIG.rstrip('=')}\n", "base64"),
    "a signature of 4 bytes": (TEXT + "\n" + f"— {A[0]} {base64.b64encode(b'abcd').decode()}\n", "shorter"),
    "a blank line after the signatures": (TEXT + "\n" + LINE + "\n", "no signature lines"),
    "text after the signatures": (TEXT + "\n" + LINE + "trailing\n", "em dash"),
    "too many signatures": (TEXT + "\n" + LINE * (MAX_SIGNATURES + 1), "more than 100"),
    "too large": (TEXT + "x" * MAX_NOTE_BYTES + "\n\n" + LINE, "larger than"),
}


@pytest.mark.parametrize("name", BAD_NOTES)
def test_every_malformed_note_is_refused_with_its_reason(name: str) -> None:
    note, detail = BAD_NOTES[name]
    verdict = open_note(note, [VA])
    assert (verdict.ok, verdict.reason, verdict.text) == (False, "malformed", None)
    assert detail in (verdict.detail or "") and "\n" not in (verdict.detail or ""), verdict.detail


def test_the_signature_limit_is_inclusive_and_above_the_specs_floor_of_16() -> None:
    assert MAX_SIGNATURES >= 16
    many = [sign_note(TEXT, f"k{i}.example", key(100 + i))[len(TEXT) + 1:] for i in range(MAX_SIGNATURES - 1)]
    note = add_signature_lines(sign_note(TEXT, *A), many)
    verdict = open_note(note, [VA])
    assert verdict.ok and len(verdict.unknown) == MAX_SIGNATURES - 1
    with pytest.raises(NoteError, match="more than 100"):
        add_signature_lines(note, sign_note(TEXT, *B)[len(TEXT) + 1:])


def test_odd_known_lists_are_treated_as_empty_or_filtered() -> None:
    note = sign_note(TEXT, *A)
    assert open_note(note, None).reason == "no_known_signature"  # type: ignore[arg-type]
    assert open_note(note, VA.encode()).reason == "no_known_signature"  # type: ignore[arg-type]
    assert open_note(note, [VA.encode(), VA]).ok  # type: ignore[list-item]


def test_the_text_may_hold_blank_lines_and_end_in_them() -> None:
    for text in ("a\n\nb\n", "a\n\n", "\n", "— looks like a signature\n\n"):
        note = sign_note(text, *A)
        verdict = open_note(note, [VA])
        assert verdict.ok and verdict.text == text, text


def test_add_signature_lines_refuses_malformed_lines_and_notes() -> None:
    note = sign_note(TEXT, *A)
    for lines in ("— b.example AAAA\n", "not a line\n", LINE[:-1], ["— x " + SIG]):
        with pytest.raises(NoteError):
            add_signature_lines(note, lines)
    with pytest.raises(NoteError):
        add_signature_lines(TEXT, LINE)  # not a signed note


# -- properties -------------------------------------------------------------------------------------------

names = st.text(st.characters(min_codepoint=0x21, exclude_characters="+\u0085\u00a0\u1680\u2028\u2029\u3000",
                              exclude_categories=("Zs", "Cs")), min_size=1, max_size=20)
texts = st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.just("\n"), max_size=200).map(lambda t: t + "\n")


@given(texts, names, st.integers(0, 2**63 - 1), st.integers(0, 3))
def test_any_text_signed_and_cosigned_opens_with_its_keys(text: str, name: str, ts: int, which: int) -> None:
    signer, witness = key(which), key(which + 50)
    note = add_signature_lines(sign_note(text, name, signer), cosign(text, name + ".w", witness, ts))
    verdict = open_note(note.encode(), [ed25519_vkey(name, signer.public_key()),
                                        cosigner_vkey(name + ".w", witness.public_key())])
    assert verdict.ok and verdict.text == text and [s.timestamp for s in verdict.verified] == [None, ts]


@given(st.binary(max_size=300) | st.text(max_size=300), st.lists(st.sampled_from([VA, VB, VW]), max_size=3))
def test_hostile_input_gets_a_verdict(raw: bytes | str, known: list[Vkey]) -> None:
    verdict = open_note(raw, known)
    assert isinstance(verdict, NoteVerdict) and not verdict.ok and verdict.reason


@given(st.integers(0, len(sign_note(TEXT, *A).encode()) - 1), st.integers(1, 255))
def test_any_changed_byte_of_a_signed_note_fails_it(at: int, xor: int) -> None:
    raw = bytearray(sign_note(TEXT, *A).encode())
    raw[at] ^= xor
    assert not open_note(bytes(raw), [VA]).ok
