#!/usr/bin/env python3
"""Verify an anticloud ledger with nothing but the Python standard library.

This file re-implements docs/ledger-format.md independently of the appliance, so an
auditor can check a ledger without installing or trusting anticloud. Copy it anywhere.

    python3 verify_ledger.py LEDGER [--checkpoint FILE] [--pubkey FILE] [--witness VKEY ... [--quorum K]]
                                    [--seal-key FILE] [--now] [--content DIR] [--json]
    python3 verify_ledger.py --package PACKAGE [--pubkey FILE] [--json]
    python3 verify_ledger.py --proof FILE --vkey VKEY [--from CHECKPOINT] [--witness VKEY ... [--quorum K]] [--json]

An evidence package (a .tar, or the directory unpacked from it) holds a segment of a ledger
with its genesis record, a signed checkpoint and a manifest: --package checks the segment's
chain up to the signed record, the signature, the manifest's claims and every file's SHA3-256,
and names the first bad item (the spec's section 11). A package that discloses sealed content
(content.jsonl) has every line checked against its record; the plaintext is decrypted and
compared only where the ``cryptography`` package is importable, and otherwise the verdict is
exit 5, PLAINTEXT NOT CHECKED.

Seals (ledger.seal records) are checked in structure always, and their tags with --seal-key,
the secret you took away at enrollment (its JSON file, or the written base32 form alone);
--now compares the last seal with this machine's clock. The verdict names the span that is
sealed and the span that is not.

The lines form an RFC 9162 Merkle tree (the spec's section 12), computed in the same pass: the
verdict gives its size and root, every checkpoint record's signed tree head (a C2SP checkpoint
note, section 13) must name the root of the records before it, and so must the tree head you
hold (--checkpoint: the JSON document's, or a tlog checkpoint note such as a witness's cosigned
one), at its size. --witness VKEY (repeatable) reports which of those witnesses cosigned which
signed tree head, from the ledger's ledger.cosigned records and your note's cosignatures, and
--quorum K how many must have (default: all).

--proof checks, without the ledger, a receipt for one record (a c2sp.org/tlog-proof whose extra
data is the record's line), or with --from the checkpoint you hold, a consistency proof (a
c2sp.org/tlog-witness add-checkpoint body: "old N", the proof, the newer checkpoint), against the
appliance's verifier key (--vkey) and the --witness keys (the spec's section 14).

Sealed content (the spec's section 15) is counted from the records: how many content references
they carry, and how many a later content.erased record erased. --content DIR, the appliance's
content store, checks that every reference not erased has its file there, of the SHA3-256 the
record states; no key is needed, and no content is read in the clear.

Exit codes:
  0  intact: every record and every signature verified (--proof: the proof is valid)
  1  broken: the first bad record is named (--proof: the proof is not valid, and why)
  2  the ledger, checkpoint, key, proof or sealing secret file cannot be read or parsed, or bad usage
  3  torn: every complete record and signature verified; the file ends mid-append (a crash)
  5  signatures NOT checked: the chain (or the proof) is intact, but a signature was there to
     check and the ``cryptography`` package is not importable, so who signed is unknown
     (--package: also when content.jsonl discloses plaintext it could not decrypt to compare)
  6  intact, but fewer than --quorum of the --witness keys cosigned any of its signed tree heads
  7  intact, but a sealed content reference that is not erased is malformed, or (--content) its
     file is missing or does not hash to what its record states; 7 outranks 6

Ed25519 is not in the standard library: checkpoint signatures are checked only where the
``cryptography`` package is importable. Without it the chain rules all still hold, and a
ledger or checkpoint that carries a signature gets exit 5 and a first line saying so, never
0 or 3. A closed standard output (``| head``) does not change the exit code.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import contextlib
import hashlib
import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64  # arrays and objects, the record object included
MAX_LINE_BYTES = 16 << 20  # a line without its newline
EXIT_CODES = {"intact": 0, "broken": 1, "torn": 3, "unchecked": 5}
EXIT_UNWITNESSED = 6  # intact, but fewer than --quorum of the --witness keys cosigned any signed tree head
EXIT_CONTENT = 7  # intact, but a sealed reference that is not erased is missing, mismatched or malformed
MEMBERS = ("data", "hash", "kind", "prev", "seq", "ts", "v")
KIND_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")  # not \d: ASCII only
HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
HEX32_RE = re.compile(r"[0-9a-f]{32}\Z")
ZERO_HASH = "0" * 64
CHECKPOINT_TYPE = "anticloud.ledger.checkpoint"
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
SUPPLEMENTARY = re.compile("[\U00010000-\U0010ffff]")
JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
SEAL_KIND, ENROLL_KIND = "ledger.seal", "seal.enroll"
SEAL_TAG = "kmac256:"
SEAL_TAG_RE = re.compile(r"kmac256:[0-9a-f]{64}\Z")
NO_SEAL = SEAL_TAG + "0" * 64  # prev_seal of epoch 0
SEAL_MEMBERS = {"enrollment", "epoch", "first_seq", "last_seq", "last_hash", "prev_seal", "interval", "final", "tag"}
SECRET_TYPE = "anticloud.seal.secret"  # noqa: S105 -- the auditor's document type, not a secret


class Bad(Exception):
    """One fault: the reason code, what went wrong, and what was expected and found."""

    def __init__(self, reason: str, detail: str, expected: Any = None, actual: Any = None,
                 seq: int | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.seq = reason, detail, seq  # seq: where a seal rule found the fault
        self.expected = None if expected is None else str(expected)
        self.actual = None if actual is None else str(actual)


# -- canonical JSON (RFC 8785, integers only) -------------------------------------------


def _reject_number(literal: str) -> Any:
    raise ValueError(f"number {literal} is not an integer")


def _int(literal: str) -> int:
    value = int(literal)
    if abs(value) > MAX_SAFE_INTEGER:
        raise ValueError(f"integer {literal} is outside +-(2**53 - 1)")
    return value


def depth(text: str) -> int:
    """How deeply arrays and objects nest, counted without recursion (strings skipped)."""
    level = deepest = 0
    for token in JSON_TOKEN.finditer(text):
        if token.group() in ("[", "{"):
            level += 1
            deepest = max(deepest, level)
        elif token.group() in ("]", "}"):
            level -= 1
    return deepest


def parse(raw: bytes) -> Any:
    text = raw.decode("utf-8")
    # Checked before json.loads, which recurses and would fail at a depth set by the stack.
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(text) > MAX_DEPTH:
        raise ValueError(f"JSON nests arrays and objects more than {MAX_DEPTH} deep")
    return json.loads(text, parse_float=_reject_number, parse_constant=_reject_number, parse_int=_int)


def canonical(value: Any) -> str:
    """RFC 8785 for the profile: members sorted by UTF-16 code units, minimal escaping.

    json.dumps sorts by code point, which is UTF-16 order unless a character above U+FFFF
    is involved; only then is the exact (slower) recursive form needed.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return text if text.isascii() or not SUPPLEMENTARY.search(text) else canonical_exact(value)


def canonical_exact(value: Any) -> str:
    if isinstance(value, dict):
        names = sorted(value, key=lambda name: name.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(canonical_exact(n) + ":" + canonical_exact(value[n]) for n in names) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical_exact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def canonical_bytes(value: Any) -> bytes:
    try:
        return canonical(value).encode("utf-8")
    except UnicodeEncodeError:
        raise Bad("unparseable_line", "string holds a lone surrogate") from None


def sha3(data: bytes) -> str:
    return hashlib.sha3_256(data).hexdigest()


def key_id(raw_key: bytes) -> str:
    return "sha3-256:" + sha3(raw_key)


# -- KMAC256 from the standard library: Keccak-f[1600] (FIPS 202), cSHAKE256, KMAC256 (SP 800-185) --
#
# hashlib offers SHAKE256 but not cSHAKE or KMAC (it cannot take the function-name and
# customisation prefix that makes them distinct), so they are written here from the two
# standards' texts:
#
# * FIPS 202, section 3: the state as 5x5 lanes of 64 bits, the step mappings theta, rho, pi,
#   chi and iota, 24 rounds; section 4: the sponge with pad10*1.
# * SP 800-185, section 2.3: left_encode, right_encode, encode_string, bytepad; section 3:
#   cSHAKE256, whose padding bits are 00 instead of SHAKE's 1111 (and which is SHAKE256 itself
#   when both strings are empty); section 4: KMAC256.
#
# Tested against NIST's published KMAC samples and pycryptodome on random input
# (tests/test_sp800_185.py). Pure Python is slow (about 250 KB/s), which is fine: KMAC runs a
# few times per seal, over one short record.

_RATE = 136  # bytes: 1600 - 2 * 256 bits of capacity, for the 256-bit security strength
_MASK = (1 << 64) - 1

# Rotation offsets r[x][y] (FIPS 202, table 2) and round constants (section 3.2.5).
_ROTATIONS = ((0, 36, 3, 41, 18), (1, 44, 10, 45, 2), (62, 6, 43, 15, 61), (28, 55, 25, 21, 56), (27, 20, 39, 8, 14))


def _round_constants() -> tuple[int, ...]:
    """RC[i] from the LFSR rc(t) of FIPS 202, algorithm 5, rather than a table of 24 literals."""
    def rc(t: int) -> int:
        if t % 255 == 0:
            return 1
        r = 1  # R = 10000000, with R[i] as bit i
        for _ in range(t % 255):
            r <<= 1  # R = 0 || R
            if r & 0x100:
                r ^= 0x71  # R[0], R[4], R[5] and R[6] ^= R[8]
            r &= 0xFF  # Trunc8
        return r & 1
    constants = []
    for round_index in range(24):
        value = 0
        for j in range(7):
            if rc(j + 7 * round_index):
                value |= 1 << ((1 << j) - 1)
        constants.append(value)
    return tuple(constants)


_RC = _round_constants()


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK if shift else value


def keccak_f1600(lanes: list[int]) -> None:
    """Permute the state in place; ``lanes[x + 5 * y]`` is lane (x, y)."""
    for constant in _RC:
        parity = [lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20] for x in range(5)]
        for x in range(5):
            d = parity[(x - 1) % 5] ^ _rotl(parity[(x + 1) % 5], 1)
            for y in range(0, 25, 5):
                lanes[x + y] ^= d
        moved = [0] * 25
        for x in range(5):
            for y in range(5):
                moved[y + 5 * ((2 * x + 3 * y) % 5)] = _rotl(lanes[x + 5 * y], _ROTATIONS[x][y])
        for y in range(0, 25, 5):
            row = moved[y:y + 5]
            for x in range(5):
                lanes[x + y] = row[x] ^ (~row[(x + 1) % 5] & row[(x + 2) % 5])
        lanes[0] ^= constant


def _sponge(message: bytes, suffix: int, length: int) -> bytes:
    """Keccak[512] with the domain ``suffix`` bits (little-endian, terminated by a 1) and pad10*1."""
    padded = bytearray(message)
    padded.append(suffix)
    padded.extend(bytes(-len(padded) % _RATE))
    padded[-1] |= 0x80
    lanes = [0] * 25
    for start in range(0, len(padded), _RATE):
        block = padded[start:start + _RATE]
        for i in range(_RATE // 8):
            lanes[i] ^= int.from_bytes(block[8 * i:8 * i + 8], "little")
        keccak_f1600(lanes)
    out = bytearray()
    while True:
        out += b"".join(lane.to_bytes(8, "little") for lane in lanes[:_RATE // 8])
        if len(out) >= length:
            return bytes(out[:length])
        keccak_f1600(lanes)


def left_encode(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return bytes([len(body)]) + body


def right_encode(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return body + bytes([len(body)])


def encode_string(data: bytes) -> bytes:
    return left_encode(8 * len(data)) + data


def bytepad(data: bytes, width: int) -> bytes:
    padded = left_encode(width) + data
    return padded + bytes(-len(padded) % width)


def cshake256(data: bytes, length: int, name: bytes = b"", custom: bytes = b"") -> bytes:
    """cSHAKE256(X, L, N, S) with L in bytes."""
    if not name and not custom:
        return hashlib.shake_256(data).digest(length)
    prefix = bytepad(encode_string(name) + encode_string(custom), _RATE)
    return _sponge(prefix + data, 0x04, length)  # the two bits 00, then pad10*1's first 1


def kmac256(key: bytes, data: bytes, length: int, custom: bytes = b"") -> bytes:
    """KMAC256(K, X, L, S) with L in bytes (a fixed-length tag: right_encode(L) ends the input)."""
    return cshake256(bytepad(encode_string(key), _RATE) + data + right_encode(8 * length), length, b"KMAC", custom)


# -- one record ---------------------------------------------------------------------------


def valid_ts(ts: Any) -> bool:
    if not isinstance(ts, str) or not TS_RE.match(ts):
        return False
    try:
        datetime.fromisoformat(ts[:-1])
    except ValueError:
        return False
    return True


def check_record(line: bytes) -> dict[str, Any]:
    """Rules 1-4 of the spec's "Verifying" section, in order."""
    if len(line) > MAX_LINE_BYTES:
        raise Bad("unparseable_line", f"line is longer than {MAX_LINE_BYTES} bytes",
                  f"at most {MAX_LINE_BYTES} bytes", f"more than {MAX_LINE_BYTES} bytes")
    try:
        record = parse(line)
    except (ValueError, RecursionError) as exc:
        raise Bad("unparseable_line", f"not valid JSON in the profile: {exc}") from None
    if not isinstance(record, dict) or sorted(record) != list(MEMBERS):
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise Bad("invalid_record", "members must be exactly data, hash, kind, prev, seq, ts, v",
                  ",".join(MEMBERS), got)
    rules = [
        ("v", type(record["v"]) is int and record["v"] == 1, "1"),
        ("seq", type(record["seq"]) is int and record["seq"] >= 0, "a non-negative integer"),
        ("ts", valid_ts(record["ts"]), "RFC 3339 UTC with microseconds"),
        ("kind", isinstance(record["kind"], str) and len(record["kind"]) <= 64
         and KIND_RE.match(record["kind"]) is not None, "a dotted lowercase name"),
        ("data", isinstance(record["data"], dict), "an object"),
        ("prev", isinstance(record["prev"], str) and HEX64_RE.match(record["prev"]) is not None,
         "64 lowercase hex digits"),
        ("hash", isinstance(record["hash"], str) and HEX64_RE.match(record["hash"]) is not None,
         "64 lowercase hex digits"),
    ]
    for name, ok, wanted in rules:
        if not ok:
            raise Bad("invalid_record", f"member {name} must be {wanted}", wanted, repr(record[name])[:80])
    if canonical_bytes(record) != line:
        raise Bad("non_canonical", "line is not the canonical encoding of its record")
    # The line is canonical, so the canonical JSON without "hash" is the line without that member:
    # its last ',"hash":"' (what follows it, kind, prev, seq, ts and v, cannot hold one) and 64 hex
    # digits and a quote. Slicing it out spares a second encoding of the record.
    at = line.rindex(b',"hash":"')
    actual = sha3(line[:at] + line[at + 74:])
    if actual != record["hash"]:
        raise Bad("hash_mismatch", "record hash does not match its contents", actual, record["hash"])
    return record


def parse_checkpoint(doc: Any) -> tuple[dict[str, Any], bytes]:
    """A checkpoint document's signed object and signature (its tree head, if any, is doc["tlog"]:
    its form is checked here, what it says by check_tree_head); ValueError names the first problem."""
    if not isinstance(doc, dict) or sorted(set(doc) - {"tlog"}) != ["checkpoint", "signature"]:
        raise ValueError("a checkpoint document has the members checkpoint and signature, and perhaps tlog")
    if "tlog" in doc and not (isinstance(doc["tlog"], str) and doc["tlog"]):
        raise ValueError("checkpoint member tlog must be a signed note")
    body = doc["checkpoint"]
    if not isinstance(body, dict) or sorted(body) != ["hash", "key_id", "ledger_id", "seq", "ts", "type", "v"]:
        raise ValueError("checkpoint members must be hash, key_id, ledger_id, seq, ts, type, v")
    if body["type"] != CHECKPOINT_TYPE or type(body["v"]) is not int or body["v"] != 1:
        raise ValueError(f"checkpoint type must be {CHECKPOINT_TYPE} version 1")
    key = body["key_id"]
    checks = [
        ("hash", isinstance(body["hash"], str) and HEX64_RE.match(body["hash"])),
        ("ledger_id", isinstance(body["ledger_id"], str) and HEX32_RE.match(body["ledger_id"])),
        ("seq", type(body["seq"]) is int and body["seq"] >= 0),
        ("ts", valid_ts(body["ts"])),
        ("key_id", isinstance(key, str) and key.startswith("sha3-256:") and HEX64_RE.match(key[9:])),
    ]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"checkpoint member {name} is malformed")
    try:
        signature = base64.b64decode(doc["signature"], validate=True) if isinstance(doc["signature"], str) else b""
    except binascii.Error:
        signature = b""
    if len(signature) != 64 or base64.b64encode(signature).decode() != doc["signature"]:  # one spelling only
        raise ValueError("signature must be 64 bytes in standard base64")
    return body, signature


def signature_checker() -> Any:
    """Ed25519 verification from `cryptography`, or None where it is not installed."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return None

    def check(raw_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


# -- forward-secure seals: the rules stated in ledger/seal.py, re-implemented ---------------
#
# K_0 is the secret the auditor took away at enrollment. With KMAC256 at 256 bits:
#   K_{i+1} = KMAC(K_i, "", S="anticloud.seal.evolve"), T_i = KMAC(K_i, "", S="anticloud.seal.tag-key"),
#   tag_i = KMAC(T_i, canonical(seal data without "tag"), S="anticloud.seal").
# A seal's key comes from its position in its chain (counting seals from the enrollment),
# never from the epoch the record claims.


def seal_kmac(key: bytes, data: bytes, custom: bytes) -> str:
    return SEAL_TAG + kmac256(key, data, 32, custom).hex()


def check_seals(sealing: list[dict[str, Any]], head: dict[str, Any], after: dict[str, Any] | None,
                secret: bytes | None, now: datetime | None) -> dict[str, Any]:
    """What the seals prove, as the verdict's "seals". ``sealing`` holds the seal.enroll and
    ledger.seal records in order, ``head`` is the last record and ``after`` the one right after
    the last of them. Raises Bad, whose ``seq`` names the record at fault."""
    mine = None if secret is None else seal_kmac(secret, b"", b"anticloud.seal.fingerprint")
    chains: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for record in sealing:
        check_sealing_record(record, chains, secret if record["data"].get("fingerprint") == mine else None, notes)
    if mine is not None and mine not in chains:
        raise Bad("seal_enrollment_missing", "no enrollment in the ledger matches the secret given", mine,
                  seq=head["seq"])
    report: dict[str, Any] = {
        "enrollments": len(chains), "seals": sum(chain["epoch"] for chain in chains.values()),
        "tags_checked": secret is not None, "fingerprint": None, "sealed_through": None,
        "closed_by_reenrollment": False, "unsealed": {"records": 0, "from": None, "until": None},
        "interval": None, "stale_seconds": None, "notes": notes}
    current = list(chains.values())[-1] if chains else None  # the newest enrollment's chain
    chain = current if mine is None else chains[mine]
    if chain is None:
        return report
    if mine is not None and chain.get("abandoned_at") is not None:  # abandoning needs no key
        raise Bad("seal_abandoned", "the chain of the secret given was abandoned by a later enrollment, which needs "
                  "no key: nothing after it is covered by this secret", "a final seal", "abandoned",
                  seq=chain["abandoned_at"])
    enrollment, last = chain["enrollment"], chain["last_seal"]
    report["fingerprint"], report["closed_by_reenrollment"] = enrollment["data"]["fingerprint"], chain["closed"]
    report["interval"] = stated_interval(chain)
    if last is not None:
        report["sealed_through"] = {"epoch": last["data"]["epoch"], "seq": last["seq"], "ts": last["ts"]}
    if current is not None and not current["closed"]:  # the newest chain's tail, whichever secret was given
        unsealed_tail(report if chain is current else {}, head, after, stated_interval(current))
    if chain is current and not chain["closed"] and now is not None:  # only the open chain goes stale
        since = last["ts"] if last is not None else enrollment["ts"]
        report["stale_seconds"] = max(0.0, (now - utc(since)).total_seconds())
    return report


def check_sealing_record(record: dict[str, Any], chains: dict[str, dict[str, Any]], key: bytes | None,
                         notes: list[str]) -> None:
    """One seal.enroll or ledger.seal, in ledger order, against ``chains`` (fingerprint -> chain,
    oldest first); ``key`` is the auditor's secret if this is their enrollment."""
    data, seq = record["data"], record["seq"]
    current = list(chains.values())[-1] if chains else None
    if record["kind"] == ENROLL_KIND:
        fp = data.get("fingerprint")
        if not isinstance(fp, str) or not SEAL_TAG_RE.match(fp) or fp in chains:
            raise Bad("seal_malformed", "an enrollment needs a fingerprint of its own", None, fp, seq=seq)
        interval = data.get("interval")
        if not (set(data) - {"abandons"} == {"fingerprint", "interval", "auditor"}
                and isinstance(data["auditor"], str) and type(interval) is int and interval >= 1):
            raise Bad("seal_malformed", "an enrollment holds exactly fingerprint, interval (a positive integer), "
                      "auditor and, when it abandons a chain, abandons", seq=seq)
        if current is not None and not current["closed"]:
            old = current["enrollment"]["data"]["fingerprint"]
            if data.get("abandons") != old:
                raise Bad("seal_unenrolled", "a new enrollment must follow the final seal of the previous one, "
                          "or say it abandons it", "final seal", "none", seq=seq)
            current["closed"] = True  # its sealing state was lost: it ends unsealed, and the verdict says so
            current["abandoned_at"] = seq
            notes.append(f"the chain {old} was abandoned unsealed at seq {seq} (its sealing state was lost)")
        chains[fp] = {"enrollment": record, "key": key, "epoch": 0, "first_seq": seq, "prev_seal": NO_SEAL,
                      "last_seal": None, "closed": False}
        return
    chain = chains.get(str(data.get("enrollment")))
    if chain is None or chain is not current or chain["closed"]:
        raise Bad("seal_unenrolled", "the seal names no open enrollment", None, str(data.get("enrollment")),
                  seq=seq)
    check_seal_record(record, chain)
    chain["epoch"] += 1
    chain["first_seq"], chain["prev_seal"], chain["last_seal"] = seq + 1, data["tag"], record
    chain["closed"] = data.get("final") is True


def stated_interval(chain: dict[str, Any]) -> int | None:
    """The interval a chain's last seal (or, before any, its enrollment) states."""
    value = (chain["last_seal"] or chain["enrollment"])["data"].get("interval")
    return value if type(value) is int else None


def unsealed_tail(report: dict[str, Any], head: dict[str, Any], after: dict[str, Any] | None,
                  interval: int | None) -> None:
    """The records after the open chain's last seal; more than two intervals of them is a fault."""
    if after is None:
        return
    count = head["seq"] - after["seq"] + 1
    report["unsealed"] = {"records": count, "from": after["ts"], "until": head["ts"]}
    span = (utc(head["ts"]) - utc(after["ts"])).total_seconds()
    # An appliance seals at least once per interval while it runs, and first thing when it
    # starts again: only stripped seals leave a longer tail.
    if interval is not None and span > 2 * interval:
        raise Bad("seal_overdue", f"{count} records after the last seal span {span:.0f} s, more than twice "
                  f"the sealing interval of {interval} s: seals were removed", f"<= {2 * interval} s",
                  f"{span:.0f} s", seq=after["seq"])


def check_seal_record(record: dict[str, Any], chain: dict[str, Any]) -> None:
    """One ledger.seal of the open ``chain``: its members, its place, and (with the key) its tag."""
    data, seq = record["data"], record["seq"]
    numbers = all(type(data.get(k)) is int and data[k] >= 0 for k in ("epoch", "first_seq", "last_seq", "interval"))
    tags = all(isinstance(data.get(k), str) and SEAL_TAG_RE.match(data[k]) for k in ("tag", "prev_seal"))
    last_hash = isinstance(data.get("last_hash"), str) and HEX64_RE.match(data["last_hash"])
    if not (numbers and tags and last_hash and set(data) <= SEAL_MEMBERS and data.get("final", True) is True):
        raise Bad("seal_malformed", "the seal's data is malformed", seq=seq)
    if data["epoch"] != chain["epoch"]:
        raise Bad("seal_epoch", "the epoch is not the next one of its chain", chain["epoch"], data["epoch"], seq=seq)
    if (data["first_seq"], data["last_seq"], data["last_hash"]) != (chain["first_seq"], seq - 1, record["prev"]):
        raise Bad("seal_gap", "the seal does not cover exactly the records since the previous one",
                  f"{chain['first_seq']}..{seq - 1} ending {record['prev']}",
                  f"{data['first_seq']}..{data['last_seq']} ending {data['last_hash']}", seq=seq)
    if data["prev_seal"] != chain["prev_seal"]:
        raise Bad("seal_chain", "prev_seal is not the previous seal's tag", chain["prev_seal"], data["prev_seal"],
                  seq=seq)
    key = chain["key"]
    if key is None:
        return
    content = canonical_bytes({k: v for k, v in data.items() if k != "tag"})
    expected = seal_kmac(kmac256(key, b"", 32, b"anticloud.seal.tag-key"), content, b"anticloud.seal")
    if data["tag"] != expected:  # the tag that would verify is never shown: a reader could copy it in
        raise Bad("seal_bad_tag", f"the tag does not verify under the key of epoch {chain['epoch']}", None,
                  data["tag"], seq=seq)
    chain["key"] = kmac256(key, b"", 32, b"anticloud.seal.evolve")


def utc(ts: str) -> datetime:
    return datetime.fromisoformat(ts[:-1]).replace(tzinfo=UTC)


def read_secret(path: str) -> bytes:
    """The auditor's sealing secret: the JSON document written at enrollment, or its written form alone."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    try:
        if text.startswith("{"):
            doc = json.loads(text)
            if doc.get("type") != SECRET_TYPE:
                raise ValueError("not an anticloud sealing secret")
            secret = bytes.fromhex(doc["secret"])
        else:
            letters = "".join(text.split()).upper()
            secret = base64.b32decode(letters + "=" * (-len(letters) % 8))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a sealing secret: {exc}") from None
    if len(secret) != 32:
        raise ValueError(f"{path} holds a secret of {len(secret)} bytes, not 32")
    return secret


# -- the whole file -----------------------------------------------------------------------


def check_link(record: dict[str, Any], index: int, head: dict[str, Any] | None, genesis: dict[str, Any] | None,
               check: Any, tree: MerkleFrontier | None = None) -> dict[str, Any] | None:
    """The rules between records (5 to 7, 9 and 10 of the spec's section 5) for ``record`` at line
    ``index`` after ``head``, ``tree`` being the Merkle tree of the lines before it; returns the
    genesis in force. Raises Bad."""
    if record["seq"] != index:
        what = "repeated" if record["seq"] < index else "skipped ahead"
        raise Bad("seq_mismatch", f"sequence number {what}", index, record["seq"])
    prev = head["hash"] if head else ZERO_HASH
    if record["prev"] != prev:
        raise Bad("prev_mismatch", "prev does not match the previous record's hash", prev, record["prev"])
    if index == 0:
        return check_genesis(record)
    if record["kind"] == "ledger.genesis":
        raise Bad("bad_genesis", "ledger.genesis may only be record 0", "record 0", f"record {index}")
    if record["kind"] == "ledger.checkpoint":
        check_checkpoint_record(record, head, genesis, check, tree)
    return genesis


def verify(path: str, checkpoint: tuple[dict[str, Any], bytes] | None, pubkey: bytes | None,
           check: Any = signature_checker, seal_secret: bytes | None = None,
           now: datetime | None = None, tree_head: str | None = None, content: str | None = None) -> dict[str, Any]:
    """The verdict on ``path``. ``check`` makes the signature checker (or returns None: none);
    ``seal_secret`` is the auditor's sealing secret, ``now`` their clock; ``tree_head`` a tlog
    checkpoint note the auditor holds (a witness's cosigned one, or the ``tlog`` of their checkpoint
    document), which pins the Merkle tree of the records it counts; ``content`` the content store
    (the appliance's HOME/content), against which every sealed reference not erased is checked."""
    replay = Replay(check(), pubkey, checkpoint, tree_head)
    with open(path, "rb") as handle:
        replay.read(handle)
    return replay.verdict(path, seal_secret, now, content)


class Replay:
    """One pass over a ledger: the rules of the specification's section 5, line by line, the
    Merkle tree of the lines as they are read (O(log n) hashes), and what the verdict reports."""

    def __init__(self, check: Any, pubkey: bytes | None, checkpoint: tuple[dict[str, Any], bytes] | None,
                 tree_note: str | None) -> None:
        self.check, self.pubkey, self.checkpoint, self.tree_note = check, pubkey, checkpoint, tree_note
        self.cp = checkpoint[0] if checkpoint else None
        self.records = self.offset = self.in_ledger = 0
        self.head: dict[str, Any] | None = None
        self.genesis: dict[str, Any] | None = None
        self.first_ts: str | None = None
        self.sealing: list[dict[str, Any]] = []  # seal.enroll and ledger.seal records, checked once the chain holds
        self.after_seal: dict[str, Any] | None = None  # the record right after the last of them
        self.fault: dict[str, Any] | None = None
        self.torn: dict[str, Any] | None = None
        self.tree = MerkleFrontier()
        self.pin: dict[str, Any] | None = None  # the auditor's tree head, once its signature is checked
        self.content = Content()  # the sealed content of the records verified

    def at(self, reason: str, detail: str, expected: Any = None, actual: Any = None) -> dict[str, Any]:
        return {"reason": reason, "seq": self.records, "line": self.records + 1, "offset": self.offset,
                "detail": detail, "expected": None if expected is None else str(expected),
                "actual": None if actual is None else str(actual)}

    def read(self, handle: Any) -> None:
        # At most one bounded line in memory: a longer one is refused by its first bytes.
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
                self.torn = {"offset": self.offset, "length": len(raw), "sha3_256": "sha3-256:" + sha3(raw)}
                break
            self.fault = self.feed(raw[:-1] if raw.endswith(b"\n") else raw)
            if self.fault is not None:
                return
            self.offset += len(raw)
        self.fault = self.check_pin()  # a tree head of exactly the whole file

    def feed(self, line: bytes) -> dict[str, Any] | None:
        """One complete line: its fault, or None once it is a record and a leaf of the tree."""
        try:
            record = check_record(line)
            self.genesis = check_link(record, self.records, self.head, self.genesis, self.check, self.tree)
        except Bad as bad:
            return self.at(bad.reason, bad.detail, bad.expected, bad.actual)
        if self.records == 0:  # a fault in what the auditor holds leaves no record verified, no first_ts
            fault, self.pin = check_auditor_inputs(self.genesis, self.pubkey, self.checkpoint, self.tree_note,
                                                   self.check, self.offset)
            if fault is not None:
                return fault
        self.first_ts = self.first_ts or record["ts"]
        self.in_ledger += record["kind"] == "ledger.checkpoint"
        self.after_seal = collect_sealing(record, self.sealing, self.after_seal)
        cp = self.cp
        if cp is not None and record["seq"] == cp["seq"] and record["hash"] != cp["hash"]:
            return self.at("checkpoint_mismatch", "record differs from the one the checkpoint signed",
                           cp["hash"], record["hash"])
        self.head = record
        self.records += 1
        if self.pin is not None and (fault := self.check_pin()) is not None:
            return fault  # the record is verified; the tree before it is not the one the auditor holds
        self.content.feed(record)
        self.tree.push(line)
        return None

    def check_pin(self) -> dict[str, Any] | None:
        """The auditor's tree head, if it counts exactly the lines in the tree so far: its root.
        The fault is in what the auditor holds against the file: no line or offset."""
        pin = self.pin
        if pin is None or self.tree.size != pin["size"] or (actual := self.tree.root()) == pin["root"]:
            return None
        return {"reason": "tree_mismatch", "seq": pin["size"], "line": None, "offset": None,
                "detail": f"the Merkle tree of the ledger's first {pin['size']} records is not the one your tree "
                          "head signed: the ledger was rewritten below it",
                "expected": pin["root"].hex(), "actual": actual.hex()}

    def verdict(self, path: str, seal_secret: bytes | None, now: datetime | None,
                content_store: str | None = None) -> dict[str, Any]:
        records, head, genesis, cp, pin, fault = (self.records, self.head, self.genesis, self.cp, self.pin,
                                                  self.fault)
        if fault is None and records == 0:
            fault = {"reason": "bad_genesis", "seq": 0, "line": 1, "offset": 0,
                     "detail": "the ledger has no complete record", "expected": "ledger.genesis", "actual": None}
        if fault is None and cp is not None and records <= cp["seq"]:
            fault = {"reason": "truncated_below_checkpoint", "seq": cp["seq"], "line": cp["seq"] + 1,
                     "offset": self.offset, "detail": "the ledger ends before the record the checkpoint signed",
                     "expected": f"record {cp['seq']}", "actual": f"last record {records - 1}"}
        if fault is None and pin is not None and records < pin["size"]:
            fault = {"reason": "truncated_below_checkpoint", "seq": pin["size"] - 1, "line": pin["size"],
                     "offset": self.offset, "detail": "the ledger ends before the last record your tree head counts",
                     "expected": f"{pin['size']} records", "actual": f"{records} records"}
        # With a signature left unchecked, neither 0 nor 3 (which say every signature verified) is true.
        unchecked = self.check is None and (self.in_ledger > 0 or cp is not None or self.tree_note is not None)
        status = "broken" if fault else "unchecked" if unchecked else "torn" if self.torn else "intact"
        matched, seals = fault is None, None  # a seal fault leaves the auditor's checkpoint matched
        tree = None if fault is not None else {"size": self.tree.size, "root": self.tree.root().hex()}
        if status != "broken" and head is not None and (self.sealing or seal_secret is not None):
            seals, fault = seal_verdict(self.sealing, head, self.after_seal, seal_secret, now)
            status = "broken" if fault else status
        content = self.content.report(content_store)
        code = EXIT_CODES[status]
        return {
            "verdict": status,
            "exit_code": EXIT_CONTENT if code == 0 and content_faulty(content) else code,
            "path": path,
            "records": records,
            "first_ts": self.first_ts,
            "last_ts": head["ts"] if head else None,
            "head": {"seq": head["seq"], "hash": head["hash"]} if head else None,
            "ledger_id": genesis["ledger_id"] if genesis else None,
            "key_id": genesis["key_id"] if genesis else None,
            "checkpoints_in_ledger": self.in_ledger,
            "signatures_checked": self.check is not None,
            "checkpoint": None if cp is None else {"seq": cp["seq"], "hash": cp["hash"], "ts": cp["ts"],
                                                   "matched": matched},
            "fault": fault,
            "torn_tail": self.torn,
            "seals": seals,
            "tree": tree,
            "tree_head": None if pin is None else {"size": pin["size"], "root": pin["root"].hex(),
                                                   "matched": matched},
            "content": content,
        }


def collect_sealing(record: dict[str, Any], sealing: list[dict[str, Any]],
                    after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Keeps seal.enroll and ledger.seal records in ``sealing``; returns the record right after the last of them."""
    if record["kind"] in (ENROLL_KIND, SEAL_KIND):
        sealing.append(record)
        return None
    return record if sealing and after is None else after


def seal_verdict(sealing: list[dict[str, Any]], head: dict[str, Any], after: dict[str, Any] | None,
                 secret: bytes | None, now: datetime | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The verdict's "seals", or the fault that breaks it (the chain held: a seal fault has no byte offset)."""
    try:
        return check_seals(sealing, head, after, secret, now), None
    except Bad as bad:
        seq = head["seq"] if bad.seq is None else bad.seq
        return None, {"reason": bad.reason, "seq": seq, "line": seq + 1, "offset": None, "detail": bad.detail,
                      "expected": bad.expected, "actual": bad.actual}


def check_genesis(record: dict[str, Any]) -> dict[str, Any]:
    if record["kind"] != "ledger.genesis":
        raise Bad("bad_genesis", "record 0 must be ledger.genesis", "ledger.genesis", record["kind"])
    data = record["data"]
    ledger_id, public_key = data.get("ledger_id"), data.get("public_key")
    if not isinstance(ledger_id, str) or not HEX32_RE.match(ledger_id):
        raise Bad("bad_genesis", "ledger_id must be 32 lowercase hex digits", None, ledger_id)
    if not isinstance(public_key, str) or not HEX64_RE.match(public_key):
        raise Bad("bad_genesis", "public_key must be a raw Ed25519 key in 64 lowercase hex digits", None, public_key)
    raw = bytes.fromhex(public_key)
    if data.get("key_id") != key_id(raw):
        raise Bad("bad_genesis", "key_id is not the SHA3-256 of public_key", key_id(raw), data.get("key_id"))
    return {"ledger_id": ledger_id, "public_key": raw, "key_id": key_id(raw)}


def check_checkpoint_record(record: dict[str, Any], head: Any, genesis: Any, check: Any,
                            tree: MerkleFrontier | None = None) -> None:
    """Rule 9, and with ``tree`` (the lines before the record: not in a package's segment) rule 10."""
    try:
        body, signature = parse_checkpoint(record["data"])
    except ValueError as exc:
        raise Bad("invalid_record", f"ledger.checkpoint data is malformed: {exc}") from None
    if body["ledger_id"] != genesis["ledger_id"]:
        raise Bad("checkpoint_mismatch", "checkpoint names another ledger", genesis["ledger_id"], body["ledger_id"])
    if (body["seq"], body["hash"]) != (head["seq"], head["hash"]):
        raise Bad("checkpoint_mismatch", "checkpoint does not sign the record before it",
                  f"{head['seq']}:{head['hash']}", f"{body['seq']}:{body['hash']}")
    if check is not None and (body["key_id"] != genesis["key_id"]
                              or not check(genesis["public_key"], canonical_bytes(body), signature)):
        raise Bad("bad_signature", "checkpoint signature does not verify with the genesis key",
                  genesis["key_id"], body["key_id"])
    note = record["data"].get("tlog")
    if note is None or tree is None:
        return
    try:
        signed = check_tree_head(note, genesis, genesis["public_key"], record["seq"], check)
    except Bad as bad:
        raise Bad(bad.reason, f"ledger.checkpoint tlog: {bad.detail}", bad.expected, bad.actual) from None
    if (actual := tree.root()) != signed["root"]:
        raise Bad("tree_mismatch", f"the signed tree head is not the Merkle root of the {record['seq']} records "
                  "before it", signed["root"].hex(), actual.hex())


def check_auditor_inputs(genesis: Any, pubkey: bytes | None, checkpoint: Any, tree_note: str | None, check: Any,
                         offset: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Rule 8, at record 0: the fault, if any, and the auditor's tree head once it is checked."""
    def fault(reason: str, seq: int, line: Any, where: Any, detail: str, expected: Any, actual: Any) -> dict[str, Any]:
        return {"reason": reason, "seq": seq, "line": line, "offset": where, "detail": detail,
                "expected": expected, "actual": actual}

    if pubkey is not None and pubkey != genesis["public_key"]:
        return fault("key_mismatch", 0, 1, offset, "genesis names another key than the one given",
                     key_id(pubkey), genesis["key_id"]), None
    key = pubkey or genesis["public_key"]
    pin = None
    if tree_note is not None:  # in what the auditor holds: reported at record 0, with no line of the file
        try:
            pin = check_tree_head(tree_note, genesis, key, None, check)
        except Bad as bad:
            return fault(bad.reason, 0, None, None, f"your tree head: {bad.detail}", bad.expected, bad.actual), None
    if checkpoint is None:
        return None, pin
    body, signature = checkpoint
    if body["ledger_id"] != genesis["ledger_id"]:
        return fault("checkpoint_mismatch", 0, 1, offset, "the checkpoint names another ledger",
                     body["ledger_id"], genesis["ledger_id"]), pin
    if check is not None and (body["key_id"] != key_id(key) or not check(key, canonical_bytes(body), signature)):
        return fault("bad_signature", body["seq"], None, None, "the checkpoint's signature does not verify with the "
                     "appliance key", key_id(key), body["key_id"]), pin
    return None, pin


def read_pubkey(path: str) -> bytes:
    """The raw key inside a PEM SubjectPublicKeyInfo for Ed25519 (RFC 8410)."""
    with open(path, "rb") as handle:
        text = handle.read().decode("ascii", "replace")
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", text, re.DOTALL)
    der = base64.b64decode("".join(match.group(1).split())) if match else b""
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise ValueError(f"{path}: not a PEM Ed25519 public key")
    return der[12:]


def unchecked_signatures(v: dict[str, Any]) -> int:
    """How many signatures this verdict rests on without having checked them."""
    if v["signatures_checked"]:
        return 0
    held_note = v["tree_head"] is not None and v["checkpoint"] is None  # a note, not a checkpoint document's tlog
    return int(v["checkpoints_in_ledger"]) + (v["checkpoint"] is not None) + held_note


def render(v: dict[str, Any]) -> str:
    """The verdict for people: the status, in full, on the first line; then the evidence."""
    unchecked = unchecked_signatures(v)
    if v["verdict"] == "broken":
        f = v["fault"]
        where = f"seq {f['seq']}" + (f" (line {f['line']}, byte {f['offset']})" if f["line"] is not None else "")
        lines = [f"BROKEN: {v['path']}", f"  first bad record  {where}",
                 f"  reason            {f['reason']}: {f['detail']}"]
        lines += [f"  {k:<18}{f[k]}" for k in ("expected", "actual") if f[k] is not None]
        lines.append(f"  verified before   {v['records']} record(s)")
        if not v["signatures_checked"]:  # an earlier forged signature may be the real first fault
            lines.append("  signatures        NOT checked: the cryptography package is not installed")
        return "\n".join(lines)
    if v["verdict"] == "unchecked":
        lines = [f"SIGNATURES NOT CHECKED: {v['path']}: the chain is intact, but {unchecked} signature(s)"
                 " were not verified (no cryptography package)"]
    else:
        lines = [f"INTACT: {v['path']}" if v["verdict"] == "intact" else f"TORN TAIL: {v['path']}"]
    t = v["torn_tail"]
    if t is not None:
        lines.append(f"  {t['length']} byte(s) at byte {t['offset']} end without a newline")
    head = v["head"]
    lines += [f"  records           {v['records']}  ({v['first_ts']} .. {v['last_ts']})",
              f"  head              seq {head['seq']}  {head['hash']}",
              f"  ledger id         {v['ledger_id']}", f"  appliance key     {v['key_id']}",
              f"  checkpoints       {v['checkpoints_in_ledger']} in the ledger"
              + (", signatures verified" if v["signatures_checked"]
                 else ", signatures NOT checked" if unchecked else "")]
    if v["checkpoint"] is not None:
        lines.append(f"  your checkpoint   seq {v['checkpoint']['seq']} matched"
                     + ("" if v["signatures_checked"] else ", its signature NOT checked"))
    if v["tree_head"] is not None:
        lines.append(f"  your tree head    size {v['tree_head']['size']} matched the Merkle tree of the ledger"
                     + ("" if v["signatures_checked"] else ", its signature NOT checked"))
    if v["tree"] is not None:
        lines.append(f"  Merkle tree       size {v['tree']['size']}  root {v['tree']['root']}")
    return "\n".join(lines + render_content(v["content"]) + render_seals(v["seals"]))


def render_seals(s: dict[str, Any] | None) -> list[str]:
    """What the seals prove, and what they do not (the words of `anticloud verify ledger`)."""
    if s is None:
        return ["  seals             none: nothing is sealed (no auditor has enrolled)"]
    checked = "tags verified" if s["tags_checked"] else "tags NOT checked (give --seal-key)"
    lines = [f"  seals             {s['seals']} in {s['enrollments']} enrollment(s), {checked}"]
    through = s["sealed_through"]
    if through is None:
        lines.append("  sealed through    nothing yet")
    else:
        lines.append(f"  sealed through    epoch {through['epoch']} (seq <= {through['seq']}, {through['ts']})"
                     + (", then closed by a re-enrollment" if s["closed_by_reenrollment"] else ""))
    tail = s["unsealed"]
    if tail["records"]:
        lines.append(f"  NOT sealed        {tail['records']} record(s) after it ({tail['from']} .. {tail['until']})")
    if s["stale_seconds"] is not None and s["interval"] is not None:
        stale = s["stale_seconds"] > 2 * s["interval"]
        lines.append(f"  last seal         {s['stale_seconds']:.0f} s ago by your clock (interval {s['interval']} s)"
                     + (": STALE, the appliance stopped sealing or its tail was cut" if stale else ""))
    return lines + [f"  note              {note}" for note in s["notes"]]


def emit(text: str) -> None:
    """Print ``text``; a reader that went away (``| head``) is not an error and changes no verdict."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# -- sealed content: references, their erasure, and the content store (spec section 15) -------------------
#
# A content reference in record R is erased when a content.erased record after R names its key group in
# "keys" or its inference in "inferences". References not erased are held (grouped by inference) until the
# end, then checked against the store: the file DIR/<id[:2]>/<id> must exist and hash to sha3_256. A
# malformed reference is a content finding, not a chain fault: its record verified like any other.

SEALED_KINDS = {"inference.begin": ("input", "messages", "prompt"), "inference.end": ("output",)}
ERASED_KIND = "content.erased"
CONTENT_ALG = "aes-256-gcm"
REF_MEMBERS = ("alg", "id", "key", "key_commitment", "sha3_256")
CONTENT_FIRST = 10  # how many of each content finding a verdict lists
CONTENT_LEAKS = {"prompt": ("prompt", "prompt_sha3_256"), "messages": ("messages", "prompt_sha3_256"),
                 "input": ("input", "input_sha3_256"), "output": ("output", "output_sha3_256")}
INFERENCE_RE = re.compile(r"[0-9a-f]{16}\Z")
SHA3_TAG_RE = re.compile(r"sha3-256:[0-9a-f]{64}\Z")
KEY_GROUP_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])-[0-9a-f]{16}\Z")


def content_refs(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The content references of one record ({seq, field, id, key, sha3_256, key_commitment}), and the malformed ones
    ({seq, field, id, reason}), in the order of their fields' names."""
    fields, data, seq = SEALED_KINDS.get(record["kind"]), record["data"], record["seq"]
    if fields is None or "sealed" not in data:
        return [], []
    sealed = data["sealed"]
    if not isinstance(sealed, dict) or not sealed:
        return [], [{"seq": seq, "field": None, "id": None,
                     "reason": "sealed is not an object naming at least one field"}]
    refs, bad = [], []
    for name in sorted(sealed):
        ref = sealed[name]
        reason = content_ref_problem(record["kind"], fields, data, name, ref)
        if reason is None:
            refs.append({"seq": seq, "field": name, "id": ref["id"], "key": ref["key"], "sha3_256": ref["sha3_256"],
                         "key_commitment": ref["key_commitment"]})
        else:
            ident = ref.get("id") if isinstance(ref, dict) else None
            bad.append({"seq": seq, "field": name, "id": ident if isinstance(ident, str) else None, "reason": reason})
    return refs, bad


def content_ref_problem(kind: str, fields: tuple[str, ...], data: dict[str, Any], name: str,
                        ref: Any) -> str | None:
    """Why one content reference is malformed (the first rule it breaks), or None."""
    if name not in fields:
        return f"{kind} seals {', '.join(fields)}, not {name}"
    if not isinstance(ref, dict) or tuple(sorted(ref)) != REF_MEMBERS:
        return "a content reference is an object of exactly " + ", ".join(REF_MEMBERS)
    inference = data.get("id")
    if not isinstance(inference, str) or not INFERENCE_RE.match(inference):
        return "the record's id is not an inference id (16 lowercase hex digits)"
    if ref["id"] != f"{inference}.{name}":
        return f"id is not {inference}.{name} (the record's inference, then the field)"
    if ref["alg"] != CONTENT_ALG:
        return f"alg is not {CONTENT_ALG}"
    for member in ("sha3_256", "key_commitment"):
        if not isinstance(ref[member], str) or not SHA3_TAG_RE.match(ref[member]):
            return f"{member} is not sha3-256:<64 lowercase hex digits>"
    if not isinstance(ref["key"], str) or not KEY_GROUP_RE.match(ref["key"]):
        return "key is not a key group id (YYYY-MM-<16 lowercase hex digits>)"
    for member in CONTENT_LEAKS[name]:
        if member in data:
            return f"the record also carries {member} beside its sealed {name}"
    return None


def erasure_of(data: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The key groups and inferences a content.erased record erases; ValueError if it is malformed."""
    keys, inferences = data.get("keys", []), data.get("inferences", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and KEY_GROUP_RE.match(k) for k in keys):
        raise ValueError("content.erased: keys is not a list of key group ids")
    if not isinstance(inferences, list) or not all(isinstance(i, str) and INFERENCE_RE.match(i) for i in inferences):
        raise ValueError("content.erased: inferences is not a list of inference ids")
    return set(keys), set(inferences)


class Content:
    """The sealed content of the records read, in order: what is sealed, erased, and still to check."""

    def __init__(self) -> None:
        self.sealed = self.erased = self.malformed_count = 0
        self.pending: dict[str, list[tuple[int, str, str, str]]] = {}  # inference -> (seq, field, key, sha3_256)
        self.by_key: dict[str, list[str]] = {}  # key group -> inferences that held a reference under it
        self.malformed: list[dict[str, Any]] = []

    def feed(self, record: dict[str, Any]) -> None:
        if record["kind"] == ERASED_KIND:
            try:
                keys, inferences = erasure_of(record["data"])
            except ValueError as exc:
                self.bad([{"seq": record["seq"], "field": None, "id": None, "reason": str(exc)}])
                return
            self.erase(keys, inferences)
            return
        refs, bad = content_refs(record)
        for ref in refs:
            inference = ref["id"].rpartition(".")[0]
            held = self.pending.setdefault(inference, [])
            if all(r[2] != ref["key"] for r in held):
                self.by_key.setdefault(ref["key"], []).append(inference)
            held.append((ref["seq"], ref["field"], ref["key"], ref["sha3_256"]))
            self.sealed += 1
        self.bad(bad)

    def erase(self, keys: set[str], inferences: set[str]) -> None:
        for inference in inferences:
            self.erased += len(self.pending.pop(inference, ()))
        for key in keys:
            for inference in self.by_key.pop(key, ()):
                held = self.pending.get(inference)
                if held is None:
                    continue
                kept = [r for r in held if r[2] != key]
                self.erased += len(held) - len(kept)
                if kept:
                    self.pending[inference] = kept
                else:
                    del self.pending[inference]

    def bad(self, found: list[dict[str, Any]]) -> None:
        self.malformed += found[:CONTENT_FIRST - len(self.malformed)]
        self.malformed_count += len(found)

    def report(self, store: str | None) -> dict[str, Any]:
        """The verdict's "content"; with ``store``, every reference not erased checked against its file."""
        counts = {"missing": 0, "mismatched": 0, "checked": 0}

        def findings(store: str) -> Any:
            for inference, held in self.pending.items():
                for seq, name, _, expected in held:
                    ident = f"{inference}.{name}"
                    counts["checked"] += 1
                    actual = store_digest(store, ident)
                    if actual != expected:
                        counts["missing" if actual is None else "mismatched"] += 1
                        yield {"seq": seq, "field": name, "id": ident, "expected": expected, "actual": actual}

        first: dict[str, list[dict[str, Any]]] = {"missing": [], "mismatched": []}
        if store is not None:
            if not os.path.isdir(store):
                raise ValueError(f"cannot read content store {store}: not a directory")
            for finding in findings(store):
                kept = first["missing" if finding["actual"] is None else "mismatched"]
                kept.append(finding)
                if len(kept) > 4 * CONTENT_FIRST:  # keep memory bounded: only the first ones are listed
                    kept[:] = sorted(kept, key=lambda f: (f["seq"], f["field"]))[:CONTENT_FIRST]
        first = {k: sorted(v, key=lambda f: (f["seq"], f["field"]))[:CONTENT_FIRST] for k, v in first.items()}
        return {"sealed": self.sealed, "erased": self.erased, "checked": counts["checked"], "store": store,
                "missing": first["missing"], "missing_count": counts["missing"],
                "mismatched": first["mismatched"], "mismatched_count": counts["mismatched"],
                "malformed": self.malformed, "malformed_count": self.malformed_count}


def content_faulty(c: dict[str, Any]) -> bool:
    """A reference that is not erased is missing, mismatched or malformed: an intact chain exits 7."""
    return bool(c["missing_count"] or c["mismatched_count"] or c["malformed_count"])


def store_digest(store: str, ident: str) -> str | None:
    """sha3-256:<hex> of the content file of ``ident`` in ``store``, or None if there is none."""
    path = os.path.join(store, ident[:2], ident)
    digest = hashlib.sha3_256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read content file {path}: {exc.strerror}") from None
    return "sha3-256:" + digest.hexdigest()


def render_content(c: dict[str, Any]) -> list[str]:
    """The content lines of `anticloud verify ledger`: the counts on one line, then the first findings."""
    line = f"  content           {c['sealed']} sealed, {c['erased']} erased"
    if c["store"] is None:
        line += ", files not checked (give --content DIR)"
    else:
        line += f", {c['checked']} checked: {c['missing_count']} missing, {c['mismatched_count']} mismatched"
    if c["malformed_count"]:
        line += f", {c['malformed_count']} MALFORMED"
    lines = [line]
    for what in ("missing", "mismatched"):
        for f in c[what]:
            lines.append(f"    {what.upper():<14} seq {f['seq']} {f['field']} {f['id']}"
                         + (f": expected {f['expected']}, actual {f['actual']}" if f["actual"] is not None else ""))
    lines += [f"    MALFORMED      seq {m['seq']}" + (f" {m['field']}" if m["field"] else "") + f": {m['reason']}"
              for m in c["malformed"]]
    if content_faulty(c):
        lines.append("  CONTENT FAULT     sealed content that is not erased is missing, altered or malformed")
    return lines


# -- evidence packages: a segment, its genesis, a signed checkpoint and a manifest (spec section 11) --------

PACKAGE_TYPE = "anticloud.evidence.package"
GENESIS_FILE, SEGMENT_FILE, CHECKPOINT_FILE, MANIFEST_FILE = (
    "genesis.jsonl", "segment.jsonl", "checkpoint.json", "manifest.json")
REQUIRED_FILES = (MANIFEST_FILE, GENESIS_FILE, CHECKPOINT_FILE, SEGMENT_FILE)
MAX_MANIFEST_BYTES = 64 << 20
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"sha3-256:[0-9a-f]{64}\Z")


class PackageBad(Exception):
    """A package fault: the file it is in, and where in it."""

    def __init__(self, reason: str, file: str, detail: str, expected: Any = None, actual: Any = None,
                 seq: int | None = None, line: int | None = None, offset: int | None = None) -> None:
        super().__init__(detail)
        self.fault = {"reason": reason, "file": file, "seq": seq, "line": line, "offset": offset, "detail": detail,
                      "expected": None if expected is None else str(expected),
                      "actual": None if actual is None else str(actual)}


class PackageFiles:
    """The regular files of a package directory, or of the one directory a tar holds (read in place)."""

    def __init__(self, path: str) -> None:
        self.tar: Any = None
        self.members: dict[str, Any] = {}
        self.problems: list[tuple[str, str]] = []
        if os.path.isdir(path):
            self.root = path
            with os.scandir(path) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_file(follow_symlinks=False):
                        self.members[entry.name] = None
                    else:
                        self.problems.append((entry.name, f"{entry.name} is not a regular file"))
            return
        import tarfile
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 -- closed by close(), after the checks
            members = self.tar.getmembers()
        except tarfile.TarError:  # its message lists every compression tried, one line each
            raise ValueError(f"{path} is neither a directory nor a tar archive (plain, gzip, bzip2 or xz)") from None
        top = members[0].name.split("/")[0] if members else ""
        for member in members:
            parts = member.name.rstrip("/").split("/")
            if member.isdir() and parts == [top]:
                continue
            if len(parts) != 2 or parts[0] != top or not member.isfile():
                self.problems.append((member.name, f"{member.name} is not a regular file directly under {top}/"))
            elif parts[1] in self.members:
                self.problems.append((parts[1], f"{parts[1]} is in the archive more than once"))
            else:
                self.members[parts[1]] = member

    def open(self, name: str) -> Any:
        if self.tar is not None:
            return self.tar.extractfile(self.members[name])
        return os.fdopen(os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_NOFOLLOW), "rb")

    def read(self, name: str, limit: int, reason: str) -> bytes:
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise PackageBad(reason, name, f"{name} is longer than {limit} bytes")
        return bytes(data)

    def digest(self, name: str) -> str:
        h = hashlib.sha3_256()
        with self.open(name) as handle:
            while block := handle.read(1 << 20):
                h.update(block)
        return "sha3-256:" + h.hexdigest()

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def verify_package(path: str, pubkey: bytes | None = None, check: Any = None,
                   open_sealed: Any = None) -> dict[str, Any]:
    """Section 11's rules, in order; ``check`` is the Ed25519 checker (None: signatures not checked),
    ``open_sealed`` AES-256-GCM decryption (None: disclosed plaintext not checked)."""
    state: dict[str, Any] = {"ledger_id": None, "key_id": None, "segment": None, "checkpoint": None,
                             "in_scope": None, "checkpoints_in_segment": 0, "files": {}, "content": None}
    files = PackageFiles(path)
    fault = None
    try:
        check_package(files, state, pubkey, check, open_sealed)
    except PackageBad as bad:
        fault = bad.fault
    except OSError as exc:
        raise ValueError(f"cannot read package {path}: {exc.strerror or exc}") from None
    finally:
        files.close()
    unchecked_plaintext = state["content"] is not None and state["content"]["disclosed"] and open_sealed is None
    status = "broken" if fault else "unchecked" if check is None or unchecked_plaintext else "intact"
    seg, cp = state["segment"], state["checkpoint"]
    pinned = None if seg is None or cp is None else {"first_seq": seg["first_seq"], "last_seq": cp["seq"]}
    return {"verdict": status, "exit_code": EXIT_CODES[status], "path": path, "package": True,
            "ledger_id": state["ledger_id"], "key_id": state["key_id"], "signatures_checked": check is not None,
            "segment": seg, "checkpoint": cp, "pinned": pinned,
            "unpinned": None if pinned is None else seg["last_seq"] - pinned["last_seq"],
            "in_scope": state["in_scope"], "checkpoints_in_segment": state["checkpoints_in_segment"],
            "files": dict(sorted(state["files"].items())), "content": state["content"], "fault": fault}


def check_package(files: PackageFiles, state: dict[str, Any], pubkey: bytes | None, check: Any,
                  open_sealed: Any = None) -> None:
    if files.problems:  # rule 1: the package's shape
        name, why = files.problems[0]
        raise PackageBad("package_invalid", name, why)
    for name in REQUIRED_FILES:
        if name not in files.members:
            raise PackageBad("file_missing", name, f"the package holds no {name}")
    manifest = read_manifest(files.read(MANIFEST_FILE, MAX_MANIFEST_BYTES, "manifest_invalid"))  # rule 2
    first_seq = manifest["segment"]["first_seq"]
    genesis, genesis_hash = package_genesis(files.read(GENESIS_FILE, MAX_LINE_BYTES + 1, "bad_genesis"), pubkey)
    state["ledger_id"], state["key_id"] = genesis["ledger_id"], genesis["key_id"]
    cp = package_checkpoint(files.read(CHECKPOINT_FILE, MAX_LINE_BYTES + 1, "invalid_checkpoint"), genesis,
                            first_seq, check)
    state["checkpoint"] = {"seq": cp["seq"], "hash": cp["hash"], "ts": cp["ts"]}
    seg: dict[str, Any] = {"first": None, "head": None, "count": 0, "offset": 0, "checkpoints": 0}
    disclosed = Disclosed(genesis["ledger_id"], manifest["in_scope"]["runs"], cp["seq"], open_sealed) \
        if CONTENT_FILE in files.members else None
    try:
        with files.open(SEGMENT_FILE) as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                segment_line(raw, seg, first_seq, genesis, genesis_hash, cp, check)
                if disclosed is not None:
                    disclosed.feed(seg["head"])
        if seg["head"] is None or seg["head"]["seq"] < cp["seq"]:
            last = "no record" if seg["head"] is None else f"last record {seg['head']['seq']}"
            raise PackageBad("truncated_below_checkpoint", SEGMENT_FILE,
                             "the segment ends before the record the checkpoint signed", f"record {cp['seq']}", last,
                             cp["seq"], cp["seq"] - first_seq + 1, seg["offset"])
    finally:
        first, head = seg["first"], seg["head"]
        state["checkpoints_in_segment"] = seg["checkpoints"]
        if first is not None and head is not None:
            state["segment"] = {"first_seq": first["seq"], "last_seq": head["seq"], "records": seg["count"],
                                "first_ts": first["ts"], "last_ts": head["ts"]}
    state["in_scope"] = check_claims(manifest, genesis, cp, seg, first_seq)  # rule 4
    state["files"] = check_files(files, manifest["files"])  # rule 5
    if disclosed is not None:  # rule 9: the disclosed content, against the segment
        with files.open(CONTENT_FILE) as handle:
            while raw := handle.readline(MAX_CONTENT_LINE_BYTES + 1):
                disclosed.line(raw)
        state["content"] = disclosed.finish(manifest)


def read_manifest(raw: bytes) -> dict[str, Any]:
    try:
        doc = parse(raw)
    except (ValueError, RecursionError) as exc:
        raise PackageBad("manifest_invalid", MANIFEST_FILE, f"not JSON in the ledger's profile: {exc}") from None
    problem = manifest_problem(doc)
    if problem is not None:
        raise PackageBad("manifest_invalid", MANIFEST_FILE, problem)
    return dict(doc)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def manifest_problem(doc: Any) -> str | None:  # noqa: C901 -- one check per member, in the spec's order
    if not isinstance(doc, dict):
        return "the manifest is a JSON object"
    if doc.get("type") != PACKAGE_TYPE or type(doc.get("v")) is not int or doc.get("v") != 1:
        return f"type must be {PACKAGE_TYPE} and v the integer 1"
    if not isinstance(doc.get("ledger_id"), str) or not HEX32_RE.match(doc["ledger_id"]):
        return "ledger_id must be 32 lowercase hex digits"
    if not isinstance(doc.get("key_id"), str):
        return "key_id must be a string"
    seg, cp, scope, files = doc.get("segment"), doc.get("checkpoint"), doc.get("in_scope"), doc.get("files")
    if not isinstance(seg, dict) or not all(_count(seg.get(k)) for k in ("first_seq", "last_seq", "records")):
        return "segment must hold the integers first_seq, last_seq and records"
    if not isinstance(cp, dict) or not _count(cp.get("seq")) or not isinstance(cp.get("hash"), str):
        return "checkpoint must hold the integer seq and the string hash"
    if not isinstance(scope, dict) or not _count(scope.get("count")) or not isinstance(scope.get("runs"), list):
        return "in_scope must hold the integer count and the list runs"
    for run in scope["runs"]:
        if not (isinstance(run, list) and len(run) == 2 and _count(run[0]) and _count(run[1]) and run[0] <= run[1]):
            return "each in_scope run is [first, last], two seqs in order"
    if not isinstance(files, dict):
        return "files must map file names to sha3-256 digests"
    for name, digest in files.items():
        if not FILE_NAME_RE.match(name) or name == MANIFEST_FILE:
            return f"files names {name!r}, which is not a plain file name other than {MANIFEST_FILE}"
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            return f"the digest of {name} must be sha3-256: and 64 lowercase hex digits"
    return None


def package_genesis(raw: bytes, pubkey: bytes | None) -> tuple[dict[str, Any], str]:
    line, _, rest = raw.partition(b"\n")
    where = {"seq": 0, "line": 1, "offset": 0}
    if rest or not raw.endswith(b"\n"):
        raise PackageBad("bad_genesis", GENESIS_FILE, "the genesis file holds exactly one line ending in a newline",
                         **where)
    try:
        record = check_record(line)
        if record["seq"] != 0:
            raise Bad("seq_mismatch", "the genesis is record 0", 0, record["seq"])
        if record["prev"] != ZERO_HASH:
            raise Bad("prev_mismatch", "record 0's prev is 64 zeros", ZERO_HASH, record["prev"])
        genesis = check_genesis(record)
    except Bad as bad:
        raise PackageBad(bad.reason, GENESIS_FILE, bad.detail, bad.expected, bad.actual, **where) from None
    if pubkey is not None and pubkey != genesis["public_key"]:
        raise PackageBad("key_mismatch", GENESIS_FILE, "genesis names another key than the one given",
                         key_id(pubkey), genesis["key_id"], **where)
    return genesis, record["hash"]


def package_checkpoint(raw: bytes, genesis: dict[str, Any], first_seq: int, check: Any) -> dict[str, Any]:
    try:
        body, signature = parse_checkpoint(parse(raw))
    except (ValueError, RecursionError) as exc:
        raise PackageBad("invalid_checkpoint", CHECKPOINT_FILE, f"not a checkpoint document: {exc}") from None
    if body["ledger_id"] != genesis["ledger_id"]:
        raise PackageBad("checkpoint_mismatch", CHECKPOINT_FILE, "the checkpoint names another ledger than the"
                         " genesis", genesis["ledger_id"], body["ledger_id"], seq=body["seq"])
    if check is not None and (body["key_id"] != genesis["key_id"]
                              or not check(genesis["public_key"], canonical_bytes(body), signature)):
        raise PackageBad("bad_signature", CHECKPOINT_FILE, "the checkpoint's signature does not verify with the"
                         " genesis key", genesis["key_id"], body["key_id"], seq=body["seq"])
    if body["seq"] < first_seq:
        raise PackageBad("checkpoint_mismatch", CHECKPOINT_FILE, "the checkpoint signs a record before the segment",
                         f"seq {first_seq} or later", f"seq {body['seq']}", seq=body["seq"])
    return dict(body)


def segment_line(raw: bytes, seg: dict[str, Any], first_seq: int, genesis: dict[str, Any], genesis_hash: str,
                 cp: dict[str, Any], check: Any) -> None:
    """Rule 3 for one line of segment.jsonl (read with its newline)."""
    seq = first_seq + seg["count"]
    where = {"seq": seq, "line": seg["count"] + 1, "offset": seg["offset"]}
    head = seg["head"]
    try:
        if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
            raise Bad("unparseable_line", "the line does not end with a newline")
        record = check_record(raw[:-1] if raw.endswith(b"\n") else raw)
        if record["seq"] != seq:
            what = "does not start at the manifest's first_seq" if head is None else (
                "repeated" if record["seq"] < seq else "skipped ahead")
            raise Bad("seq_mismatch", f"sequence number {what}", seq, record["seq"])
        if head is not None and record["prev"] != head["hash"]:
            raise Bad("prev_mismatch", "prev does not match the previous record's hash", head["hash"], record["prev"])
        if seq == 0 and record["hash"] != genesis_hash:
            raise Bad("bad_genesis", "record 0 of the segment is not the package's genesis", genesis_hash,
                      record["hash"])
        if seq > 0 and record["kind"] == "ledger.genesis":
            raise Bad("bad_genesis", "ledger.genesis may only be record 0", "record 0", f"record {seq}")
        if record["kind"] == "ledger.checkpoint":
            signed = record["data"].get("checkpoint")  # the record before the first line is not here
            unknown = signed.get("hash") if isinstance(signed, dict) else None
            before = {"seq": seq - 1, "hash": head["hash"] if head is not None else unknown}
            check_checkpoint_record(record, before, genesis, check)
            seg["checkpoints"] += 1
        if seq == cp["seq"] and record["hash"] != cp["hash"]:
            raise Bad("checkpoint_mismatch", "record differs from the one the checkpoint signed", cp["hash"],
                      record["hash"])
    except Bad as bad:
        raise PackageBad(bad.reason, SEGMENT_FILE, bad.detail, bad.expected, bad.actual, **where) from None
    seg["first"] = seg["first"] or record
    seg["head"] = record
    seg["count"] += 1
    seg["offset"] += len(raw)


def check_claims(manifest: dict[str, Any], genesis: dict[str, Any], cp: dict[str, Any], seg: dict[str, Any],
                 first_seq: int) -> int:
    m_seg, m_cp, scope = manifest["segment"], manifest["checkpoint"], manifest["in_scope"]
    claims = [
        ("ledger_id", genesis["ledger_id"], manifest["ledger_id"]),
        ("key_id", genesis["key_id"], manifest["key_id"]),
        ("segment.last_seq", seg["head"]["seq"], m_seg["last_seq"]),
        ("segment.records", seg["count"], m_seg["records"]),
        ("checkpoint.seq", cp["seq"], m_cp["seq"]),
        ("checkpoint.hash", cp["hash"], m_cp["hash"]),
        ("in_scope.count", sum(b - a + 1 for a, b in scope["runs"]), scope["count"]),
    ]
    for name, verified, claimed in claims:
        if verified != claimed:
            raise PackageBad("manifest_mismatch", MANIFEST_FILE, f"the manifest's {name} is not what the package"
                             " holds", verified, claimed)
    low = first_seq
    for a, b in scope["runs"]:
        if a < low or b > cp["seq"]:
            raise PackageBad("manifest_mismatch", MANIFEST_FILE, "an in-scope run lies outside the pinned span, or"
                             " the runs overlap or are out of order", f"within {low}..{cp['seq']}", f"[{a}, {b}]")
        low = b + 1
    return int(scope["count"])


def check_files(files: PackageFiles, listed: dict[str, str]) -> dict[str, str]:
    present = {name for name in files.members if name != MANIFEST_FILE}
    matched: dict[str, str] = {}
    problems: list[tuple[str, str, Any, Any]] = []
    for name in sorted(present | set(listed)):
        if name not in listed:
            problems.append(("file_extra", name, None, "a file the manifest does not list"))
        elif name not in present:
            problems.append(("file_missing", name, listed[name], None))
        elif (digest := files.digest(name)) != listed[name]:
            problems.append(("file_mismatch", name, listed[name], digest))
        else:
            matched[name] = digest
    if problems:
        reason, name, expected, actual = problems[0]
        counts = {r: sum(p[0] == r for p in problems) for r in ("file_mismatch", "file_missing", "file_extra")}
        summary = ", ".join(f"{n} {r.removeprefix('file_')}" for r, n in counts.items())
        raise PackageBad(reason, name, f"{name} is not as the manifest lists it ({summary})", expected, actual)
    return matched


# -- disclosed content: content.jsonl, each line checked against its record (section 11 rule 9, section 15) --
#
# A line discloses one sealed field of an in-scope record (its data key, its content file in base64 and its
# value) or says a content.erased record of the segment erased it. The record commits to the ciphertext and
# to the key; AES-256-GCM, where the cryptography package is importable, proves the value.

CONTENT_FILE = "content.jsonl"
MAX_CONTENT_LINE_BYTES = 256 << 20
CONTENT_KEY_LABEL = b"anticloud/content-key/v1\x00"
DISCLOSED_MEMBERS = ("ciphertext", "data_key", "field", "id", "seq", "value")
ERASED_MEMBERS = ("erased_at", "field", "id", "seq", "state")
DATA_KEY_RE = re.compile(r"[0-9a-f]{64}\Z")


def content_opener() -> Any:
    """AES-256-GCM decryption from `cryptography`, or None where it is not installed."""
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None

    def open_sealed(key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes | None:
        try:
            return bytes(AESGCM(key).decrypt(nonce, sealed, ad))
        except InvalidTag:
            return None

    return open_sealed


def content_line_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "a line is a JSON object"
    members = tuple(sorted(doc))
    if members not in (DISCLOSED_MEMBERS, ERASED_MEMBERS):
        return ("a line is an object of exactly " + ", ".join(DISCLOSED_MEMBERS) + " (disclosed), or "
                + ", ".join(ERASED_MEMBERS) + " (erased)")
    if not _count(doc["seq"]):
        return "seq is a record's seq"
    if not isinstance(doc["field"], str) or not isinstance(doc["id"], str):
        return "field and id are strings"
    if members == ERASED_MEMBERS:
        return None if doc["state"] == "erased" and _count(doc["erased_at"]) else (
            'state is "erased" and erased_at a record\'s seq')
    if not isinstance(doc["data_key"], str) or not DATA_KEY_RE.match(doc["data_key"]):
        return "data_key is 32 bytes in 64 lowercase hex digits"
    try:
        exact = base64.b64encode(base64.b64decode(doc["ciphertext"], validate=True)).decode() == doc["ciphertext"]
    except (TypeError, binascii.Error, ValueError):
        exact = False
    if not exact:
        return "ciphertext is standard base64 (padded, one spelling)"
    try:
        canonical_bytes(doc["value"])
    except Bad:
        return "value cannot be put in canonical JSON (a lone surrogate)"
    return None


class Disclosed:
    """Feed it the segment's records, then content.jsonl's lines; finish() checks that none is missing."""

    def __init__(self, ledger_id: str, runs: list[list[int]], pinned_through: int, open_sealed: Any) -> None:
        self.ledger_id, self.runs, self.pinned_through, self.open_sealed = ledger_id, runs, pinned_through, open_sealed
        self.starts = [a for a, _ in runs]
        self.refs: dict[tuple[int, str], dict[str, Any]] = {}
        self.erasures: dict[int, tuple[set[str], set[str]]] = {}
        self.seen: set[tuple[int, str]] = set()
        self.last: tuple[int, str] | None = None
        self.lines = self.offset = self.disclosed = self.erased = 0

    def in_scope(self, seq: int) -> bool:
        at = bisect.bisect_right(self.starts, seq) - 1  # the runs are in order (rule 7 checks it)
        return at >= 0 and self.runs[at][0] <= seq <= self.runs[at][1]

    def feed(self, record: dict[str, Any]) -> None:
        if record["kind"] in SEALED_KINDS and self.in_scope(record["seq"]):
            for ref in content_refs(record)[0]:
                self.refs[(ref["seq"], ref["field"])] = ref
        elif record["kind"] == ERASED_KIND and record["seq"] <= self.pinned_through:  # unsigned: no proof
            with contextlib.suppress(ValueError):  # a malformed content.erased erases nothing
                self.erasures[record["seq"]] = erasure_of(record["data"])

    def erased_by(self, ref: dict[str, Any]) -> list[int]:
        inference = ref["id"].rpartition(".")[0]
        return sorted(at for at, (keys, inferences) in self.erasures.items()
                      if at > ref["seq"] and (ref["key"] in keys or inference in inferences))

    def line(self, raw: bytes) -> None:
        self.lines += 1
        where: dict[str, Any] = {"line": self.lines, "offset": self.offset}
        self.offset += len(raw)
        if not raw.endswith(b"\n"):
            raise PackageBad("content_invalid", CONTENT_FILE, "the line does not end with a newline"
                             f" (or is longer than {MAX_CONTENT_LINE_BYTES} bytes)", **where)
        try:
            doc = parse(raw[:-1])
        except (ValueError, RecursionError) as exc:
            raise PackageBad("content_invalid", CONTENT_FILE, f"not JSON in the ledger's profile: {exc}",
                             **where) from None
        problem = content_line_problem(doc)
        if problem is not None:
            raise PackageBad("content_invalid", CONTENT_FILE, problem, **where)
        seq, name = doc["seq"], doc["field"]
        where["seq"] = seq
        if self.last is not None and (seq, name) <= self.last:
            raise PackageBad("content_invalid", CONTENT_FILE, "lines are in order of seq, then field, each field"
                             " once", f"after seq {self.last[0]} {self.last[1]}", f"seq {seq} {name}", **where)
        self.last = (seq, name)
        self.match(doc, where)
        self.seen.add((seq, name))

    def match(self, doc: dict[str, Any], where: dict[str, Any]) -> None:
        seq, name = doc["seq"], doc["field"]
        if not self.in_scope(seq):
            raise PackageBad("content_mismatch", CONTENT_FILE, f"record {seq} is not in scope", **where)
        ref = self.refs.get((seq, name))
        if ref is None:
            raise PackageBad("content_mismatch", CONTENT_FILE, f"record {seq} carries no well-formed reference"
                             f" sealing {name}", **where)
        if doc["id"] != ref["id"]:
            raise PackageBad("content_mismatch", CONTENT_FILE, "the line's id is not the reference's", ref["id"],
                             doc["id"], **where)
        erasures = self.erased_by(ref)
        if "state" in doc:
            if doc["erased_at"] not in erasures:
                raise PackageBad("content_mismatch", CONTENT_FILE, f"no content.erased record at seq"
                                 f" {doc['erased_at']} of the segment erases {ref['id']} after record {seq}",
                                 f"one of {erasures}" if erasures else "a content.erased record that erases it",
                                 f"seq {doc['erased_at']}", **where)
            self.erased += 1
            return
        if erasures:
            raise PackageBad("content_mismatch", CONTENT_FILE, f"it discloses {ref['id']}, which the content.erased"
                             f" record at seq {erasures[0]} erased", **where)
        self.sealed(ref, doc, where)
        self.disclosed += 1

    def sealed(self, ref: dict[str, Any], doc: dict[str, Any], where: dict[str, Any]) -> None:
        blob, data_key = base64.b64decode(doc["ciphertext"]), bytes.fromhex(doc["data_key"])
        if (digest := "sha3-256:" + sha3(blob)) != ref["sha3_256"]:
            raise PackageBad("content_mismatch", CONTENT_FILE, "the ciphertext is not the one its record commits to",
                             ref["sha3_256"], digest, **where)
        if (commitment := "sha3-256:" + sha3(CONTENT_KEY_LABEL + data_key)) != ref["key_commitment"]:
            raise PackageBad("content_mismatch", CONTENT_FILE, "the data key is not the one its record commits to",
                             ref["key_commitment"], commitment, **where)
        if self.open_sealed is None:
            return
        inference = ref["id"].rpartition(".")[0]
        ad = canonical_bytes({"field": ref["field"], "id": ref["id"], "inference": inference,
                              "ledger": self.ledger_id, "v": 1})
        plain = self.open_sealed(data_key, blob[:12], blob[12:], ad) if len(blob) >= 28 else None
        if plain is None:
            raise PackageBad("content_mismatch", CONTENT_FILE, "the ciphertext does not open under the data key and"
                             " its record's associated data", **where)
        if plain != canonical_bytes(doc["value"]):
            raise PackageBad("content_mismatch", CONTENT_FILE, "value is not what the ciphertext holds", **where)

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        missing = sorted(set(self.refs) - self.seen)
        if missing:
            seq, name = missing[0]
            raise PackageBad("content_mismatch", CONTENT_FILE, f"record {seq} seals {name}, and no line discloses it"
                             f" or shows it erased ({len(missing)} field(s) without a line)", seq=seq,
                             line=self.lines + 1, offset=self.offset)
        claimed = manifest.get("content")
        for member, counted in (("disclosed", self.disclosed), ("erased", self.erased)):
            stated = claimed.get(member) if isinstance(claimed, dict) else None
            if type(stated) is not int or stated != counted:
                raise PackageBad("manifest_mismatch", MANIFEST_FILE, f"the manifest's content.{member} is not what"
                                 f" {CONTENT_FILE} holds", counted, stated)
        return {"disclosed": self.disclosed, "erased": self.erased, "plaintext_checked": self.open_sealed is not None}


def render_package(v: dict[str, Any]) -> str:
    """A package's verdict for people: the status first, then what is proven and what is not."""
    if v["verdict"] == "broken":
        f = v["fault"]
        where = f["file"] + (f", seq {f['seq']}" if f["seq"] is not None else "") + (
            f" (line {f['line']}, byte {f['offset']})" if f["line"] is not None else "")
        lines = [f"BROKEN: {v['path']}", f"  first bad item    {where}",
                 f"  reason            {f['reason']}: {f['detail']}"]
        lines += [f"  {k:<18}{f[k]}" for k in ("expected", "actual") if f[k] is not None]
        if not v["signatures_checked"]:
            lines.append("  signatures        NOT checked: the cryptography package is not installed")
        return "\n".join(lines)
    seg, cp, pinned = v["segment"], v["checkpoint"], v["pinned"]
    content = v["content"]
    head = (f"SIGNATURES NOT CHECKED: {v['path']}: the segment's chain is intact, but the checkpoint's signature"
            " was not verified (no cryptography package)" if v["verdict"] == "unchecked" and not v["signatures_checked"]
            else f"PLAINTEXT NOT CHECKED: {v['path']}: the package is intact, but the disclosed content was not"
            " decrypted (no cryptography package)" if v["verdict"] == "unchecked"
            else f"INTACT: {v['path']} (evidence package)")
    signed = "signature verified" if v["signatures_checked"] else "signature NOT checked"
    lines = [head,
             f"  ledger id         {v['ledger_id']}",
             f"  appliance key     {v['key_id']}",
             "                    compare it with the operator out of band (or give --pubkey)",
             f"  segment           seq {seg['first_seq']}..{seg['last_seq']}, {seg['records']} records"
             f" ({seg['first_ts']} .. {seg['last_ts']})",
             f"  checkpoint        seq {cp['seq']}, made {cp['ts']}, {signed}",
             f"  pinned            seq {pinned['first_seq']}..{pinned['last_seq']}: the checkpoint signs them"]
    if v["unpinned"]:
        lines.append(f"  NOT pinned        {v['unpinned']} record(s) after the checkpoint's seq")
    lines += [f"  in scope          {v['in_scope']} record(s) (the others link them to the checkpoint)",
              f"  files             {len(v['files'])} as the manifest lists them (the manifest is not signed)",
              *([] if content is None else [
                  f"  content           {content['disclosed']} sealed field(s) disclosed, {content['erased']} erased:"
                  " each matches its record's commitments"
                  + ("" if content["plaintext_checked"] else ", its plaintext NOT checked (no cryptography package)")]),
              "  not proven        " + (f"what came before seq {seg['first_seq']}; " if seg["first_seq"] else "")
              + "seals (they need a whole epoch)"]
    return "\n".join(lines)


# -- Merkle tree proofs (RFC 9162 section 2.1, SHA-256), re-implemented from ledger/merkle.py's contract --
#
# Leaf i is line i without its newline; leaf hash SHA-256(0x00 || line), node SHA-256(0x01 || left || right).
# Each verifier returns {"ok", "kind", "reason", "detail", "expected", "actual"} (the roots in hex, for
# root_mismatch) and never raises; reason is one of bad_input, out_of_range, wrong_length, root_mismatch,
# with the package's words, since receipts' verdicts quote them.

MERKLE_HASH_SIZE = 32
MERKLE_EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


def merkle_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def merkle_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleFrontier:
    """The tree of the lines read so far, as the perfect subtrees on its right edge: the hash of
    each, largest first, one per bit set in ``size`` (O(log n) hashes). A line completes one
    subtree for each trailing 1 bit of the size before it, so a push costs one leaf hash and,
    amortised, one node hash."""

    __slots__ = ("size", "stack")

    def __init__(self) -> None:
        self.size = 0
        self.stack: list[bytes] = []

    def push(self, line: bytes) -> None:
        stack, digest, merges = self.stack, _sha256(b"\x00" + line).digest(), self.size
        while merges & 1:
            digest = _sha256(b"\x01" + stack.pop() + digest).digest()
            merges >>= 1
        stack.append(digest)
        self.size += 1

    def root(self) -> bytes:
        """The subtrees folded right to left, as RFC 9162's recursion splits the tree."""
        if not self.stack:
            return MERKLE_EMPTY_ROOT
        acc = self.stack[-1]
        for digest in reversed(self.stack[:-1]):
            acc = merkle_node(digest, acc)
        return acc


def _proof_verdict(kind: str, reason: str | None = None, detail: str | None = None, expected: bytes | None = None,
                   actual: bytes | None = None) -> dict[str, Any]:
    return {"ok": reason is None, "kind": kind, "reason": reason, "detail": detail,
            "expected": None if expected is None else expected.hex(),
            "actual": None if actual is None else actual.hex()}


def _is_size(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_hash(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == MERKLE_HASH_SIZE


def _proof_problem(proof: Any) -> str | None:
    if not isinstance(proof, (list, tuple)):
        return f"the proof must be a list of hashes, not {type(proof).__name__}"
    bad = [i for i, h in enumerate(proof) if not _is_hash(h)]
    return f"proof hash {bad[0]} is not {MERKLE_HASH_SIZE} bytes" if bad else None


def _path_length(index: int, size: int) -> int:
    inner = (index ^ (size - 1)).bit_length()
    return inner + bin(index >> inner).count("1")


def merkle_verify_inclusion(index: Any, size: Any, leaf: Any, proof: Any, root: Any) -> dict[str, Any]:
    """RFC 9162 2.1.3.2: does ``proof`` place the leaf hash ``leaf`` at ``index`` under ``root``?"""
    kind = "inclusion"
    if not (_is_size(index) and _is_size(size)):
        return _proof_verdict(kind, "bad_input", "index and size must be non-negative integers")
    if not (_is_hash(leaf) and _is_hash(root)):
        return _proof_verdict(kind, "bad_input", f"the leaf hash and the root must be {MERKLE_HASH_SIZE} bytes")
    if (problem := _proof_problem(proof)) is not None:
        return _proof_verdict(kind, "bad_input", problem)
    if index >= size:
        return _proof_verdict(kind, "out_of_range", f"index {index} is not in a tree of size {size}")
    if len(proof) != (want := _path_length(index, size)):
        return _proof_verdict(kind, "wrong_length",
                              f"the proof has {len(proof)} hashes; index {index} in a tree of size {size} needs {want}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if fn % 2 == 1 or fn == sn:
            r = merkle_node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            r = merkle_node(r, p)
        fn, sn = fn // 2, sn // 2
    if r != root:
        return _proof_verdict(kind, "root_mismatch",
                              f"the proof for index {index} recomputes a different root for size {size}", root, r)
    return _proof_verdict(kind)


def _consistency_chain(old_size: int, new_size: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 3 to 6 of RFC 9162 2.1.4.2: the old and the new root that ``path`` recomputes."""
    fn, sn = old_size - 1, new_size - 1
    while fn % 2 == 1:
        fn, sn = fn // 2, sn // 2
    fr = sr = path[0]
    for c in path[1:]:
        if fn % 2 == 1 or fn == sn:
            fr, sr = merkle_node(c, fr), merkle_node(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            sr = merkle_node(sr, c)
        fn, sn = fn // 2, sn // 2
    return fr, sr


def merkle_verify_consistency(old_size: Any, new_size: Any, old_root: Any, new_root: Any,
                              proof: Any) -> dict[str, Any]:
    """RFC 9162 2.1.4.2: does ``proof`` show the tree (new_size, new_root) extends (old_size, old_root)?
    Equal sizes need an empty proof and equal roots; old size 0 an empty proof and the empty root."""
    kind = "consistency"
    if not (_is_size(old_size) and _is_size(new_size)):
        return _proof_verdict(kind, "bad_input", "the sizes must be non-negative integers")
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return _proof_verdict(kind, "bad_input", f"both roots must be {MERKLE_HASH_SIZE} bytes")
    if (problem := _proof_problem(proof)) is not None:
        return _proof_verdict(kind, "bad_input", problem)
    if old_size > new_size:
        return _proof_verdict(kind, "out_of_range", f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0 or old_size == new_size:
        if proof:
            return _proof_verdict(kind, "wrong_length", f"the proof has {len(proof)} hashes; from size {old_size} "
                                                        f"to {new_size} it needs 0")
        want = MERKLE_EMPTY_ROOT if old_size == 0 else new_root
        if old_root != want:
            which = "the empty tree's root" if old_size == 0 else "the new root, the sizes being equal"
            return _proof_verdict(kind, "root_mismatch", f"the old root is not {which}", want, old_root)
        return _proof_verdict(kind)
    shift = (old_size & -old_size).bit_length() - 1  # the largest perfect subtree ending at the old tree's end
    power_of_two = old_size == 1 << shift
    want_length = _path_length(old_size - 1, new_size) - shift + (0 if power_of_two else 1)
    if len(proof) != want_length:
        return _proof_verdict(kind, "wrong_length", f"the proof has {len(proof)} hashes; from size {old_size} to "
                                                    f"{new_size} it needs {want_length}")
    fr, sr = _consistency_chain(old_size, new_size, ([old_root] if power_of_two else []) + list(proof))
    if fr != old_root:
        return _proof_verdict(kind, "root_mismatch", f"the proof recomputes a different root for the old size "
                                                     f"{old_size}", old_root, fr)
    if sr != new_root:
        return _proof_verdict(kind, "root_mismatch", f"the proof recomputes a different root for the new size "
                                                     f"{new_size}", new_root, sr)
    return _proof_verdict(kind)


# -- C2SP signed notes, checkpoints and tlog-proofs, re-implemented from ledger/note.py and ledger/tlog_text.py --
#
# c2sp.org/signed-note: a text ending in a newline, a blank line (the LAST one in the note), then lines
# "— <name> base64(key id || signature)"; key id = SHA-256(name || 0x0A || type || public key)[:4].
# Type 0x01 is Ed25519 over the text; type 0x04 (c2sp.org/tlog-cosignature) carries a u64 big-endian
# timestamp and an Ed25519 signature over "cosignature/v1\ntime <timestamp>\n" || text. Every base64
# field must be the one canonical spelling. Lines from keys not given are listed and ignored; a given
# key's line must verify. Without `cryptography`, the given keys' lines are reported as not checked.

NOTE_TYPES = {0x01: "Ed25519", 0x04: "cosignature/v1"}
NOTE_MAX_SIGNATURES = 100
NOTE_MAX_BYTES = 1 << 20
NOTE_MAX_TIMESTAMP = 2**63 - 1
NOTE_SIG_PREFIX = "\u2014 "
TLOG_HASH_SIZE = 32
TLOG_MAX_SIZE = 2**63 - 1
TLOG_MAX_PROOF_HASHES = 63
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
TLOG_DECIMAL_RE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
TLOG_MAX_BODY_BYTES = NOTE_MAX_BYTES + 64 * 64  # a note, and the proof lines before it


def note_key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()[:4]


def note_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "a key name must be a non-empty string"
    if "+" in name:
        return f"key name {name!r} contains '+'"
    if any(ch.isspace() or ch < " " for ch in name):
        return f"key name {name!r} contains a space or a control character"
    return None


def b64_exact(text: str, what: str) -> bytes:
    """Standard padded base64 in its one canonical spelling, or ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{what} is not in canonical base64")
    return raw


def parse_vkey(text: Any) -> dict[str, Any]:
    """A verifier key ``name+hex8+base64(type || key)`` as {name, key_id, type, public}; ValueError if malformed."""
    if not isinstance(text, str):
        raise ValueError("a verifier key must be a string")
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise ValueError("a verifier key is name+keyid+base64key")
    name, hex_id, blob = parts
    if (problem := note_name_problem(name)) is not None:
        raise ValueError(problem)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise ValueError(f"key id {hex_id!r} is not 8 lowercase hex digits")
    raw = b64_exact(blob, "the key")
    if not raw:
        raise ValueError("the key is empty")
    if raw[0] not in NOTE_TYPES:
        raise ValueError(f"unsupported signature type 0x{raw[0]:02x}")
    if len(raw) != 33:
        raise ValueError(f"a {NOTE_TYPES[raw[0]]} public key must be 32 bytes, not {len(raw) - 1}")
    if bytes.fromhex(hex_id) != note_key_id(name, raw[0], raw[1:]):
        raise ValueError(f"key id {hex_id} does not match the key")
    return {"name": name, "key_id": bytes.fromhex(hex_id), "type": raw[0], "public": raw[1:]}


def split_note(raw: Any) -> tuple[str, list[dict[str, Any]]]:
    """A signed note's text and signature lines ({name, key_id, signature, line}), syntax only; ValueError."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the note is not valid UTF-8") from None
    if not isinstance(raw, bytes):
        raise ValueError("a note must be bytes or a string")
    if len(raw) > NOTE_MAX_BYTES:
        raise ValueError(f"the note is larger than {NOTE_MAX_BYTES} bytes")
    try:
        note = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the note is not valid UTF-8") from None
    if re.search("[\x00-\x09\x0b-\x1f]", note):
        raise ValueError("the note holds a control character other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise ValueError("the note has no blank line before its signatures")
    text, block = note[:split + 1], note[split + 2:]
    if not block:
        raise ValueError("the note has no signature lines")
    if not block.endswith("\n"):
        raise ValueError("the last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > NOTE_MAX_SIGNATURES:
        raise ValueError(f"the note has more than {NOTE_MAX_SIGNATURES} signature lines")
    return text, [parse_note_line(line) for line in lines]


def parse_note_line(line: str) -> dict[str, Any]:
    """One signature line without its newline as {name, key_id, signature, line}; ValueError."""
    if not line.startswith(NOTE_SIG_PREFIX):
        raise ValueError(f"signature line {line[:40]!r} does not start with an em dash and a space")
    name, _, blob = line[2:].partition(" ")
    if (problem := note_name_problem(name)) is not None:
        raise ValueError(f"signature line: {problem}")
    sig = b64_exact(blob, f"the signature of {name!r}")
    if len(sig) < 5:
        raise ValueError(f"the signature of {name!r} is shorter than a key id and one byte")
    return {"name": name, "key_id": sig[:4], "signature": sig[4:], "line": line}


def _note_signature(sig: dict[str, Any], key: dict[str, Any], text: str, now: int | None,
                    check: Any) -> tuple[dict[str, Any] | None, str, str]:
    """One line from a given key: its entry, or None with a reason and a detail."""
    who = f"{key['name']}+{key['key_id'].hex()}"
    entry = {"name": key["name"], "key_id": key["key_id"].hex(), "type": key["type"], "timestamp": None}
    message, signature = text.encode("utf-8"), sig["signature"]
    if key["type"] == 0x04:
        if len(signature) != 72:
            return None, "bad_signature", f"the cosignature of known key {who} is not a timestamp and 64 bytes"
        entry["timestamp"] = ts = int.from_bytes(signature[:8], "big")
        if ts > NOTE_MAX_TIMESTAMP:
            return None, "bad_signature", f"the cosignature of known key {who} has a timestamp above 2^63-1"
        message, signature = f"cosignature/v1\ntime {ts}\n{text}".encode(), signature[8:]
    if check is None:
        return entry, "not_checked", ""
    if not check(key["public"], message, signature):
        kind = "cosignature" if key["type"] == 0x04 else "signature"
        return None, "bad_signature", f"the {kind} of known key {who} does not verify"
    if now is not None and entry["timestamp"] is not None and entry["timestamp"] > now:
        return None, "future_timestamp", f"the cosignature of {who} is dated {entry['timestamp']}, after now ({now})"
    return entry, "", ""


def open_note(raw: Any, known: list[dict[str, Any]], now: int | None = None, check: Any = None) -> dict[str, Any]:
    """Open a signed note against the verifier keys ``known`` (from parse_vkey); never raises.

    ``check`` is signature_checker(): without it the known keys' lines are listed as not_checked and
    the verdict is not ok (reason not_checked). Reasons: malformed, no_known_signature, bad_signature,
    ambiguous_key, future_timestamp (a cosignature dated after ``now``), not_checked.
    """
    verdict: dict[str, Any] = {"ok": False, "reason": None, "detail": None, "text": None, "verified": [],
                               "unknown": [], "not_checked": []}
    try:
        text, sigs = split_note(raw)
    except ValueError as exc:
        return dict(verdict, reason="malformed", detail=str(exc))
    keys: dict[tuple[str, bytes], list[dict[str, Any]]] = {}
    for key in known:
        same = keys.setdefault((key["name"], key["key_id"]), [])
        if key not in same:
            same.append(key)
    seen_unknown: set[str] = set()
    seen_known: set[tuple[str, bytes]] = set()
    for sig in sigs:
        candidates = keys.get((sig["name"], sig["key_id"]))
        if not candidates:
            if sig["line"] not in seen_unknown:
                seen_unknown.add(sig["line"])
                verdict["unknown"].append({"name": sig["name"], "key_id": sig["key_id"].hex()})
            continue
        if len(candidates) > 1:
            return dict(verdict, reason="ambiguous_key", verified=[], not_checked=[],
                        detail=f"{len(candidates)} known keys are named {sig['name']}+{sig['key_id'].hex()}")
        entry, reason, detail = _note_signature(sig, candidates[0], text, now, check)
        if entry is None:  # a refused note lists no signature as verified
            return dict(verdict, reason=reason, detail=detail, verified=[], not_checked=[])
        if (sig["name"], sig["key_id"]) not in seen_known:
            seen_known.add((sig["name"], sig["key_id"]))
            verdict["not_checked" if reason == "not_checked" else "verified"].append(entry)
    if verdict["not_checked"]:
        return dict(verdict, reason="not_checked",
                    detail=f"{len(verdict['not_checked'])} signatures from known keys NOT checked: "
                           "the cryptography package is not importable")
    if not verdict["verified"]:
        return dict(verdict, reason="no_known_signature",
                    detail=f"none of the note's {len(sigs)} signatures is from a known key")
    return dict(verdict, ok=True, text=text)


def tlog_decimal(text: str, what: str) -> int:
    if not TLOG_DECIMAL_RE.match(text) or int(text) > TLOG_MAX_SIZE:
        raise ValueError(f"{what} {text[:40]!r} is not a decimal from 0 to 2^63-1 without leading zeros")
    return int(text)


def _tlog_hash(text: str, what: str) -> bytes:
    raw = b64_exact(text, what)
    if len(raw) != TLOG_HASH_SIZE:
        raise ValueError(f"{what} is {len(raw)} bytes, not {TLOG_HASH_SIZE}")
    return raw


def parse_tlog_checkpoint(text: Any) -> dict[str, Any]:
    """A c2sp.org/tlog-checkpoint note text as {origin, size, root, extensions}; ValueError if malformed."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise ValueError("a checkpoint text ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValueError(f"a checkpoint has at least three lines, not {len(lines)}")
    if not lines[0]:
        raise ValueError("the checkpoint origin is empty")
    size = tlog_decimal(lines[1], "the tree size")
    root = _tlog_hash(lines[2], "the root hash")
    if any(not line for line in lines[3:]):
        raise ValueError("a checkpoint extension line is empty")
    if re.search("[\x00-\x1f]", lines[0]):
        raise ValueError("the origin must be a non-empty line without control characters")
    if any(re.search("[\x00-\x1f]", line) for line in lines[3:]):
        raise ValueError("an extension line must be a non-empty line without control characters")
    return {"origin": lines[0], "size": size, "root": root, "extensions": lines[3:]}


def _tlog_body(raw: Any, what: str) -> tuple[list[str], str]:
    """The header lines of a tlog-proof or add-checkpoint body (up to the first blank line) and the
    note after it; ValueError."""
    if not isinstance(raw, bytes):
        raise ValueError(f"{what} must be bytes")
    if len(raw) > TLOG_MAX_BODY_BYTES:
        raise ValueError(f"{what} is larger than {TLOG_MAX_BODY_BYTES} bytes")
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not valid UTF-8") from None
    head, sep, note = body.partition("\n\n")
    if not sep:
        raise ValueError(f"{what} has no blank line before its checkpoint")
    return head.split("\n"), note


def _tlog_proof_lines(lines: list[str], what: str) -> list[bytes]:
    if len(lines) > TLOG_MAX_PROOF_HASHES:
        raise ValueError(f"{what} has more than {TLOG_MAX_PROOF_HASHES} lines")
    return [_tlog_hash(line, f"{what} line {i + 1}") for i, line in enumerate(lines)]


def tlog_tree_head(note: Any) -> dict[str, Any]:
    """The {origin, size, root, extensions} of a signed checkpoint note, for form only; ValueError."""
    text, _ = split_note(note)
    return parse_tlog_checkpoint(text)


def tlog_checkpoint_text(head: dict[str, Any]) -> str:
    """The note text of a tree head: origin, size, base64 root and extension lines, each ending in a newline."""
    lines = (head["origin"], str(head["size"]), base64.b64encode(head["root"]).decode(), *head["extensions"])
    return "".join(f"{line}\n" for line in lines)


def parse_tlog_proof(raw: Any) -> dict[str, Any]:
    """A c2sp.org/tlog-proof@v1 file as {extra, index, proof, checkpoint, tree}, checked for form only
    (the checkpoint's signatures are open_note's, the proof merkle_verify_inclusion's); ValueError."""
    lines, note = _tlog_body(raw, "the proof")
    if lines[0] != TLOG_PROOF_HEADER:
        raise ValueError(f"the proof does not start with {TLOG_PROOF_HEADER}")
    extra, at = None, 1
    if at < len(lines) and lines[at].startswith("extra "):
        extra, at = b64_exact(lines[at][6:], "the extra data"), at + 1
    if at >= len(lines) or not lines[at].startswith("index "):
        raise ValueError("the proof has no 'index <n>' line")
    index = tlog_decimal(lines[at][6:], "the index")
    proof = _tlog_proof_lines(lines[at + 1:], "the inclusion proof")
    return {"extra": extra, "index": index, "proof": proof, "checkpoint": note, "tree": tlog_tree_head(note)}


def parse_add_checkpoint(raw: Any) -> dict[str, Any]:
    """A c2sp.org/tlog-witness add-checkpoint body as {old_size, proof, checkpoint, tree}, checked for
    form only (the consistency proof is merkle_verify_consistency's); ValueError."""
    lines, note = _tlog_body(raw, "the request")
    if not lines[0].startswith("old "):
        raise ValueError("the request does not start with an 'old <size>' line")
    old_size = tlog_decimal(lines[0][4:], "the old size")
    proof = _tlog_proof_lines(lines[1:], "the consistency proof")
    return {"old_size": old_size, "proof": proof, "checkpoint": note, "tree": tlog_tree_head(note)}


# -- signed tree heads in the ledger (the spec's section 5, rules 8, 10 and 12) --------------------------
#
# A ledger.checkpoint record's document may carry "tlog": a checkpoint note of origin
# "anticloud/<ledger id>", of the seq lines before the record, signed by the genesis key under that
# name. Its root must be the Merkle root of those lines. A tree head the auditor holds is checked
# the same way (of any size), with their key, and its root against the tree when the tree has that size.


def check_tree_head(note: Any, genesis: dict[str, Any], key: bytes, size: int | None, check: Any) -> dict[str, Any]:
    """The tree head ``note`` states, signed by ``key`` as this ledger's log (of ``size`` lines, if
    given); Bad names the first problem. The caller compares its root with the tree."""
    origin = "anticloud/" + genesis["ledger_id"]
    try:
        text, lines = split_note(note)
        head = parse_tlog_checkpoint(text)
    except ValueError as exc:
        raise Bad("invalid_record", f"not a tlog checkpoint: {exc}") from None
    if head["origin"] != origin:
        raise Bad("checkpoint_mismatch", "the tree head is of another log", origin, head["origin"])
    if head["extensions"]:
        raise Bad("checkpoint_mismatch", "the tree head has extension lines, which this log never signs",
                  None, head["extensions"][0])
    if size is not None and head["size"] != size:
        raise Bad("checkpoint_mismatch", "the tree head is not of the records before it", size, head["size"])
    want = note_key_id(origin, 0x01, key)
    mine = [line for line in lines if (line["name"], line["key_id"]) == (origin, want)]
    if not mine:
        raise Bad("bad_signature", "the tree head bears no signature by the appliance key under its origin",
                  f"{origin}+{want.hex()}", ", ".join(f"{line['name']}+{line['key_id'].hex()}" for line in lines))
    if check is not None and not all(check(key, text.encode(), line["signature"]) for line in mine):
        raise Bad("bad_signature", "the tree head's signature does not verify with the appliance key",
                  f"{origin}+{want.hex()}")
    return head


# -- witnesses: which of the auditor's witnesses cosigned which signed tree head (ledger/witnesses.py) --
#
# A ledger.cosigned record's data names a tree head by "size" and "root" (base64) and carries one
# cosignature line. It counts for a witness the auditor gave (a cosignature/v1 vkey) if that size and
# root are a signed tree head of the ledger and the line verifies over its text. A checkpoint note the
# auditor holds adds the cosignatures it bears. Per witness: the largest size cosigned; the report is
# met if at least ``quorum`` of them cosigned some head, and names the largest size that many did.


def signed_heads_and_cosignatures(path: str, records: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """The tree heads of the ledger's checkpoint records and the data of its ledger.cosigned
    records, oldest first, among its first ``records`` lines (which the caller has verified)."""
    heads, cosigned = [], []
    with open(path, "rb") as handle:
        for _ in range(records):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if b'"kind":"ledger.c' not in raw:  # neither kind: not worth parsing
                continue
            record = parse(raw)
            if record["kind"] == "ledger.checkpoint" and "tlog" in record["data"]:
                heads.append(tlog_tree_head(record["data"]["tlog"]))
            elif record["kind"] == "ledger.cosigned":
                cosigned.append(record["data"])
    return heads, cosigned


def vkey_text(key: dict[str, Any]) -> str:
    return f"{key['name']}+{key['key_id'].hex()}+{base64.b64encode(bytes([key['type']]) + key['public']).decode()}"


def witness_report(heads: list[dict[str, Any]], cosigned: list[Any], witnesses: list[dict[str, Any]], quorum: int,
                   held: str | None, check: Any) -> dict[str, Any]:
    """The verdict's "witnesses". ``held``: a cosigned checkpoint note the auditor holds, whose log
    signature the whole-file verification checked. Without ``check`` (no cryptography), the given
    witnesses' cosignatures are counted as "not_checked", and none of them counts."""
    by_size: dict[int, dict[str, Any]] = {}
    for signed in heads:
        by_size.setdefault(signed["size"], signed)
    cosigners = [w for w in witnesses if w["type"] == 0x04]
    best = {vkey_text(w): 0 for w in cosigners}
    unknown, not_checked, invalid = 0, 0, []
    claims: list[tuple[dict[str, Any] | None, str, str]] = [
        (_named_head(by_size, data), str(data.get("cosignature", "")), str(data.get("witness", "?")))
        for data in cosigned]
    if held is not None:
        text, lines = split_note(held)
        pinned = parse_tlog_checkpoint(text)
        claims += [(pinned, line["line"] + "\n", line["name"]) for line in lines if line["name"] != pinned["origin"]]
    for head, line, who in claims:
        if head is None:
            invalid.append(f"a cosignature by {who} names no signed tree head of this ledger")
            continue
        opened = open_note(tlog_checkpoint_text(head) + "\n" + line, cosigners, None, check)
        if opened["ok"]:
            for sig in opened["verified"]:
                key = next(vkey_text(w) for w in witnesses if (w["name"], w["key_id"].hex()) == (sig["name"],
                                                                                                  sig["key_id"]))
                best[key] = max(best[key], head["size"])
        elif opened["reason"] == "no_known_signature":
            unknown += 1
        elif opened["reason"] == "not_checked":
            not_checked += 1
        else:
            invalid.append(f"the cosignature by {who} on size {head['size']} does not verify: {opened['detail']}")
    sizes = sorted(best.values(), reverse=True)
    witnessed = sizes[quorum - 1] if 0 < quorum <= len(sizes) else 0
    report = {"quorum": quorum, "met": witnessed > 0, "witnessed_size": witnessed, "cosigned": best,
              "unknown": unknown, "invalid": invalid}
    return report if check is not None else dict(report, not_checked=not_checked)


def _named_head(by_size: dict[int, dict[str, Any]], data: dict[str, Any]) -> dict[str, Any] | None:
    size = data.get("size")
    head = by_size.get(size) if isinstance(size, int) else None
    if head is None or data.get("root") != base64.b64encode(head["root"]).decode():
        return None
    return head


def render_witnesses(report: dict[str, Any] | None) -> list[str]:
    """The witness lines of `anticloud verify ledger`, and what was not checked."""
    if report is None:
        return []
    n, quorum, size = len(report["cosigned"]), report["quorum"], report["witnessed_size"]
    if report["met"]:
        lines = [f"  witnesses         records 0..{size - 1} cosigned by at least {quorum} of {n}"]
    elif report.get("not_checked"):
        lines = [f"  witnesses         NOT CHECKED: {report['not_checked']} cosignature(s) by the witnesses given "
                 "were not verified (no cryptography package)"]
    else:
        lines = [f"  witnesses         NOT WITNESSED: fewer than {quorum} of {n} cosigned any signed tree head"]
    for vkey, largest in report["cosigned"].items():
        cosigned = f"cosigned up to size {largest}" if largest else "no cosignature"
        lines.append(f"    {vkey.split('+')[0]:<28} {cosigned}")
    if report["unknown"]:
        lines.append(f"    ({report['unknown']} cosignature(s) by witnesses not given)")
    return lines + [f"    INVALID: {line}" for line in report["invalid"]]


# -- receipts and consistency proofs, checked without the ledger (ledger/receipt.py) ------------------
#
# A receipt is a tlog-proof whose extra data is the record's line: the checkpoint must be of the log
# the auditor's vkey names and signed by it (and cosigned by ``quorum`` of the witnesses given), the
# line a record whose seq is the proof's index, and the inclusion proof must lead from its leaf hash
# to the checkpoint's root. A consistency proof is an add-checkpoint body: the checkpoint the auditor
# holds and the newer one both signed by the log, the proof starting from the size held, and leading
# from the older root to the newer. Reasons: malformed, wrong_log, bad_signature, unwitnessed,
# wrong_record, not_included, not_consistent, and here also not_checked (no cryptography: everything
# else held).

NOT_CHECKED_PROOF = "every other check passed, but no signature was verified: the cryptography package is not installed"


def receipt_verdict(ok: bool, kind: str, reason: str | None = None, detail: str | None = None,
                    size: int | None = None, old_size: int | None = None, record: Any = None,
                    witnesses: list[str] | None = None) -> dict[str, Any]:
    return {"ok": ok, "kind": kind, "reason": reason, "detail": detail, "size": size, "old_size": old_size,
            "record": record, "witnesses": witnesses or []}


def _cosigners(note: str, witnesses: list[dict[str, Any]], check: Any) -> tuple[list[str], int]:
    """The names of the given witnesses whose cosignature on ``note`` verifies, and how many more
    cosigned it where no signature can be checked."""
    names, pending = [], 0
    for witness in witnesses:
        opened = open_note(note, [witness], None, check)
        if opened["ok"] and opened["verified"]:
            names.append(witness["name"])
        pending += opened["reason"] == "not_checked"
    return names, pending


def _signed_by(note: Any, log: dict[str, Any], witnesses: list[dict[str, Any]], quorum: int,
               kind: str, check: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None, bool]:
    """The tree head ``note`` states, once signed by ``log`` and cosigned by ``quorum`` of ``witnesses``;
    else the verdict that refuses it. The flag: a signature it rests on was not checked."""
    try:
        head = tlog_tree_head(note)
    except ValueError as exc:
        return None, receipt_verdict(False, kind, "malformed", f"the checkpoint is malformed: {exc}"), False
    if head["origin"] != log["name"]:
        return None, receipt_verdict(False, kind, "wrong_log", f"the checkpoint is of {head['origin']}, the key "
                                                               f"given is of {log['name']}", head["size"]), False
    opened = open_note(note, [log], None, check)
    unchecked = opened["reason"] == "not_checked"
    if not opened["ok"] and not unchecked:
        return None, receipt_verdict(False, kind, "bad_signature", f"the checkpoint is not signed by {log['name']}: "
                                                                   f"{opened['detail']}", head["size"]), False
    names, pending = _cosigners(note, witnesses, check)
    if len(names) + pending < quorum:
        counted = f"{len(names) + pending} of the {len(witnesses)} witnesses given cosigned it" + (
            " (their signatures NOT checked)" if pending else "")
        return None, receipt_verdict(False, kind, "unwitnessed", f"{counted}; {quorum} are required", head["size"],
                                     witnesses=names), False
    return head, None, unchecked or len(names) < quorum


def check_receipt(raw: Any, log: dict[str, Any], witnesses: list[dict[str, Any]] | None = None, quorum: int = 0,
                  check: Any = None) -> dict[str, Any]:
    """Is the record a tlog-proof carries at its index in a tree the log signed? ``check`` is
    signature_checker() (None: signatures not checked, reason not_checked if all else holds)."""
    kind, witnesses = "inclusion", witnesses or []
    try:
        proof = parse_tlog_proof(raw)
    except ValueError as exc:
        return receipt_verdict(False, kind, "malformed", f"not a tlog-proof: {exc}")
    head, bad, unchecked = _signed_by(proof["checkpoint"], log, witnesses, quorum, kind, check)
    if bad is not None:
        return bad
    assert head is not None
    size = head["size"]
    if proof["extra"] is None:
        return receipt_verdict(False, kind, "malformed", "the proof carries no record (no extra line)", size)
    try:
        record = check_record(proof["extra"])
    except Bad as fault:
        return receipt_verdict(False, kind, "malformed", f"the record carried is not one: {fault.detail}", size)
    if record["seq"] != proof["index"]:
        return receipt_verdict(False, kind, "wrong_record", f"the record carried is seq {record['seq']}, the proof "
                                                            f"is for index {proof['index']}", size)
    merkle = merkle_verify_inclusion(proof["index"], size, merkle_leaf(proof["extra"]), proof["proof"], head["root"])
    if not merkle["ok"]:
        return receipt_verdict(False, kind, "not_included", f"{merkle['reason']}: {merkle['detail']}", size)
    names = _cosigners(proof["checkpoint"], witnesses, check)[0]
    if unchecked:
        return receipt_verdict(False, kind, "not_checked", NOT_CHECKED_PROOF, size, record=record, witnesses=names)
    return receipt_verdict(True, kind, size=size, record=record, witnesses=names)


def check_extension(raw: Any, old_note: str, log: dict[str, Any], witnesses: list[dict[str, Any]] | None = None,
                    quorum: int = 0, check: Any = None) -> dict[str, Any]:
    """Does the newer tree of an add-checkpoint body extend ``old_note``, the checkpoint the auditor
    holds, both signed by the log?"""
    kind, witnesses = "consistency", witnesses or []
    try:
        request = parse_add_checkpoint(raw)
    except ValueError as exc:
        return receipt_verdict(False, kind, "malformed", f"not an add-checkpoint body: {exc}")
    old, bad, old_unchecked = _signed_by(old_note, log, [], 0, kind, check)
    if bad is not None:
        return dict(bad, detail=f"the checkpoint you hold: {bad['detail']}")
    new, bad, new_unchecked = _signed_by(request["checkpoint"], log, witnesses, quorum, kind, check)
    if bad is not None:
        return bad
    assert old is not None and new is not None
    if request["old_size"] != old["size"]:
        return receipt_verdict(False, kind, "wrong_record", f"the proof starts from size {request['old_size']}, "
                                                            f"the checkpoint you hold is of size {old['size']}",
                               new["size"])
    merkle = merkle_verify_consistency(old["size"], new["size"], old["root"], new["root"], request["proof"])
    if not merkle["ok"]:
        return receipt_verdict(False, kind, "not_consistent", f"{merkle['reason']}: {merkle['detail']}", new["size"],
                               old["size"])
    names = _cosigners(request["checkpoint"], witnesses, check)[0]
    if old_unchecked or new_unchecked:
        return receipt_verdict(False, kind, "not_checked", NOT_CHECKED_PROOF, new["size"], old["size"],
                               witnesses=names)
    return receipt_verdict(True, kind, size=new["size"], old_size=old["size"], witnesses=names)


def render_receipt(v: dict[str, Any], log: dict[str, Any]) -> str:
    """One line, in the words of `anticloud verify proof`."""
    if not v["ok"] and v["reason"] != "not_checked":
        return f"NOT VALID: {v['reason']}: {v['detail']}"
    record = v["record"]
    what = (f"record {record['seq']} ({record['kind']}, {record['ts']}) is in the tree of size {v['size']} signed by "
            f"{log['name']}" if record else f"the tree of size {v['size']} signed by {log['name']} extends the one "
                                            f"of size {v['old_size']} you hold")
    if not v["ok"]:
        return f"SIGNATURES NOT CHECKED: {what}, if its signatures are genuine: no signature was verified (no " \
               "cryptography package)"
    return f"VALID: {what}" + (f", cosigned by {', '.join(v['witnesses'])}" if v["witnesses"] else "")


# -- the command line -------------------------------------------------------------------------


def read_vkey(text: str, flag: str) -> dict[str, Any]:
    """A verifier key given on the command line, or the file holding it; ValueError names the flag."""
    raw = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            raw = handle.read()
    try:
        return parse_vkey(raw.strip())
    except ValueError as exc:
        raise ValueError(f"{flag}: not a verifier key: {exc}") from None


def read_held(path: str) -> tuple[tuple[dict[str, Any], bytes] | None, str | None, str | None]:
    """The checkpoint an auditor holds: (the JSON document, its tree head note, a held note). A JSON
    document's ``tlog`` is its tree head; a tlog checkpoint note is a tree head that may bear
    witnesses' cosignatures. ValueError if it is neither."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw.lstrip().startswith(b"{"):
        doc = parse(raw)
        return parse_checkpoint(doc), doc.get("tlog"), None
    try:
        text = raw.decode()
        tlog_tree_head(text)
    except ValueError as exc:
        raise ValueError(f"{path}: neither a checkpoint document nor a tlog checkpoint: {exc}") from None
    return None, text, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__[__doc__.index("Exit codes:"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ledger", nargs="?", help="a ledger file (or give --package or --proof)")
    parser.add_argument("--package", metavar="PATH",
                        help="an evidence package (its .tar, or the directory unpacked from it) instead of a ledger")
    parser.add_argument("--proof", metavar="FILE", help="a receipt (tlog-proof) or, with --from, a consistency proof "
                                                        "(add-checkpoint body) to check without the ledger")
    parser.add_argument("--vkey", metavar="VKEY",
                        help="with --proof: the appliance's verifier key (or a file holding it)")
    parser.add_argument("--from", dest="old", metavar="CHECKPOINT",
                        help="with --proof: the older tlog checkpoint you hold, for a consistency proof")
    parser.add_argument("--checkpoint", metavar="FILE", help="a checkpoint you hold: the JSON document, or a tlog "
                                                              "checkpoint note (a witness's cosigned one)")
    parser.add_argument("--witness", action="append", default=[], metavar="VKEY",
                        help="a witness you trust, by its verifier key (or a file holding it); repeat for each")
    parser.add_argument("--quorum", type=int, metavar="K",
                        help="how many of the --witness keys must have cosigned (default: all of them)")
    parser.add_argument("--pubkey", help="the appliance.pub you hold")
    parser.add_argument("--seal-key", metavar="FILE",
                        help="the sealing secret you took away at enrollment: every seal's tag must verify")
    parser.add_argument("--now", action="store_true",
                        help="compare the last seal with this machine's clock, and report how stale it is")
    parser.add_argument("--content", metavar="DIR",
                        help="the content store (the appliance's HOME/content): every sealed reference that is "
                             "not erased must have its file there, of the SHA3-256 its record states")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    usage_problem = _usage_problem(args)
    if usage_problem is not None:
        parser.error(usage_problem)
    if args.proof is not None:
        return main_proof(args)
    if args.package is not None:
        try:
            verdict = verify_package(args.package, read_pubkey(args.pubkey) if args.pubkey else None,
                                     signature_checker(), content_opener())
        except (OSError, ValueError, RecursionError) as exc:
            print(f"verify_ledger: error: {exc}", file=sys.stderr)
            return 2
        emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json else render_package(verdict))
        return int(verdict["exit_code"])
    try:
        pubkey = read_pubkey(args.pubkey) if args.pubkey else None
        checkpoint, tree_head, held = read_held(args.checkpoint) if args.checkpoint else (None, None, None)
        witnesses = [read_vkey(w, "--witness") for w in args.witness]
        secret = read_secret(args.seal_key) if args.seal_key else None
        now = datetime.now(UTC) if args.now else None
        verdict = verify(args.ledger, checkpoint, pubkey, seal_secret=secret, now=now, tree_head=tree_head,
                         content=args.content)
        report = None
        if witnesses and verdict["verdict"] != "broken":
            heads, cosigned = signed_heads_and_cosignatures(args.ledger, verdict["records"])
            report = witness_report(heads, cosigned, witnesses, args.quorum or len(witnesses), held,
                                    signature_checker())
            verdict["witnesses"] = report
    except (OSError, ValueError, RecursionError) as exc:
        print(f"verify_ledger: error: {exc}", file=sys.stderr)
        return 2
    emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json
         else "\n".join([render(verdict), *render_witnesses(report)]))
    unwitnessed = report is not None and not report["met"] and verdict["exit_code"] == 0
    return EXIT_UNWITNESSED if unwitnessed else int(verdict["exit_code"])


def _usage_problem(args: argparse.Namespace) -> str | None:
    if sum(x is not None for x in (args.ledger, args.package, args.proof)) != 1:
        return "give one of: a ledger file, --package PATH, --proof FILE"
    if args.quorum is not None and not 1 <= args.quorum <= len(args.witness):
        return f"--quorum {args.quorum} needs at least {max(args.quorum, 1)} --witness keys"
    if args.proof is not None:
        if args.vkey is None:
            return "--proof needs --vkey, the appliance's verifier key"
        if args.checkpoint or args.pubkey or args.seal_key or args.now or args.content:
            return ("--checkpoint, --pubkey, --seal-key, --now and --content are for a whole ledger; give --from "
                    "for a proof")
        return None
    if args.vkey is not None or args.old is not None:
        return "--vkey and --from are for --proof"
    if args.package is not None and (args.checkpoint or args.seal_key or args.now or args.witness or args.content):
        return ("--checkpoint, --seal-key, --now, --witness and --content are for a whole ledger; a package carries "
                "its checkpoint")
    return None


def main_proof(args: argparse.Namespace) -> int:
    """--proof: a receipt, or with --from a consistency proof, checked without the ledger."""
    try:
        log = read_vkey(args.vkey, "--vkey")
        witnesses = [read_vkey(w, "--witness") for w in args.witness]
        with open(args.proof, "rb") as handle:
            raw = handle.read(TLOG_MAX_BODY_BYTES + 1)  # enough to refuse a longer one
        old = None
        if args.old is not None:
            with open(args.old, encoding="utf-8", errors="replace") as handle:
                old = handle.read(NOTE_MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        print(f"verify_ledger: error: {exc}", file=sys.stderr)
        return 2
    check, quorum = signature_checker(), args.quorum or len(witnesses)
    verdict = (check_extension(raw, old, log, witnesses, quorum, check) if old is not None
               else check_receipt(raw, log, witnesses, quorum, check))
    emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json else render_receipt(verdict, log))
    return 0 if verdict["ok"] else 5 if verdict["reason"] == "not_checked" else 1


if __name__ == "__main__":
    sys.exit(main())
