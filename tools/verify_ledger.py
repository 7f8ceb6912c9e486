#!/usr/bin/env python3
"""Verify an anticloud ledger with nothing but the Python standard library.

This file re-implements docs/ledger-format.md independently of the appliance, so an
auditor can check a ledger without installing or trusting anticloud. Copy it anywhere.

    python3 verify_ledger.py LEDGER [--checkpoint FILE] [--pubkey FILE] [--seal-key FILE] [--now] [--json]
    python3 verify_ledger.py --package PACKAGE [--pubkey FILE] [--json]

An evidence package (a .tar, or the directory unpacked from it) holds a segment of a ledger
with its genesis record, a signed checkpoint and a manifest: --package checks the segment's
chain up to the signed record, the signature, the manifest's claims and every file's SHA3-256,
and names the first bad item (the spec's section 11).

Seals (ledger.seal records) are checked in structure always, and their tags with --seal-key,
the secret you took away at enrollment (its JSON file, or the written base32 form alone);
--now compares the last seal with this machine's clock. The verdict names the span that is
sealed and the span that is not.

The RFC 9162 Merkle tree over the lines (the spec's section 12) is verified by the functions
merkle_verify_inclusion and merkle_verify_consistency; they have no command-line flag yet.

Exit codes:
  0  intact: every record and every signature verified
  1  broken: the first bad record is named
  2  the ledger, checkpoint, key or sealing secret file cannot be read or parsed, or bad usage
  3  torn: every complete record and signature verified; the file ends mid-append (a crash)
  5  signatures NOT checked: the chain is intact, but a checkpoint signature was there to
     check and the ``cryptography`` package is not importable, so who signed is unknown

Ed25519 is not in the standard library: checkpoint signatures are checked only where the
``cryptography`` package is importable. Without it the chain rules all still hold, and a
ledger or checkpoint that carries a signature gets exit 5 and a first line saying so, never
0 or 3. A closed standard output (``| head``) does not change the exit code.
"""

from __future__ import annotations

import argparse
import base64
import binascii
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
    body = {k: v for k, v in record.items() if k != "hash"}
    actual = sha3(canonical_bytes(body))
    if actual != record["hash"]:
        raise Bad("hash_mismatch", "record hash does not match its contents", actual, record["hash"])
    return record


def parse_checkpoint(doc: Any) -> tuple[dict[str, Any], bytes]:
    if not isinstance(doc, dict) or sorted(doc) != ["checkpoint", "signature"]:
        raise ValueError("a checkpoint document has exactly the members checkpoint and signature")
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
               check: Any) -> dict[str, Any] | None:
    """The rules between records (2 to 5 of the specification) for ``record`` at line ``index``
    after ``head``; returns the genesis in force. Raises Bad."""
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
        check_checkpoint_record(record, head, genesis, check)
    return genesis


def verify(path: str, checkpoint: tuple[dict[str, Any], bytes] | None, pubkey: bytes | None,
           check: Any = signature_checker, seal_secret: bytes | None = None,
           now: datetime | None = None) -> dict[str, Any]:
    """The verdict on ``path``. ``check`` makes the signature checker (or returns None: none);
    ``seal_secret`` is the auditor's sealing secret, ``now`` their clock."""
    check = check()
    records, offset, head, genesis, first_ts, in_ledger = 0, 0, None, None, None, 0
    sealing: list[dict[str, Any]] = []  # seal.enroll and ledger.seal records, checked once the chain holds
    after_seal: dict[str, Any] | None = None  # the record right after the last of them
    fault: dict[str, Any] | None = None
    torn = None
    cp = checkpoint[0] if checkpoint else None

    def at(reason: str, detail: str, expected: Any = None, actual: Any = None) -> dict[str, Any]:
        return {"reason": reason, "seq": records, "line": records + 1, "offset": offset, "detail": detail,
                "expected": None if expected is None else str(expected),
                "actual": None if actual is None else str(actual)}

    with open(path, "rb") as handle:
        # At most one bounded line in memory: a longer one is refused by its first bytes.
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
                torn = {"offset": offset, "length": len(raw), "sha3_256": "sha3-256:" + sha3(raw)}
                break
            try:
                record = check_record(raw[:-1] if raw.endswith(b"\n") else raw)
                genesis = check_link(record, records, head, genesis, check)
                first_ts = first_ts or record["ts"]
                in_ledger += record["kind"] == "ledger.checkpoint"
                after_seal = collect_sealing(record, sealing, after_seal)
            except Bad as bad:
                fault = at(bad.reason, bad.detail, bad.expected, bad.actual)
                break
            if records == 0:
                fault = check_auditor_inputs(genesis, pubkey, checkpoint, check, offset)
            if fault is None and cp is not None and record["seq"] == cp["seq"] and record["hash"] != cp["hash"]:
                fault = at("checkpoint_mismatch", "record differs from the one the checkpoint signed",
                           cp["hash"], record["hash"])
            if fault is not None:
                break
            head = record
            records += 1
            offset += len(raw)

    if fault is None and records == 0:
        fault = {"reason": "bad_genesis", "seq": 0, "line": 1, "offset": 0,
                 "detail": "the ledger has no complete record", "expected": "ledger.genesis", "actual": None}
    if fault is None and cp is not None and records <= cp["seq"]:
        fault = {"reason": "truncated_below_checkpoint", "seq": cp["seq"], "line": cp["seq"] + 1, "offset": offset,
                 "detail": "the ledger ends before the record the checkpoint signed",
                 "expected": f"record {cp['seq']}", "actual": f"last record {records - 1}"}
    # With a signature left unchecked, neither 0 nor 3 (which say every signature verified) is true.
    unchecked = check is None and (in_ledger > 0 or cp is not None)
    status = "broken" if fault else "unchecked" if unchecked else "torn" if torn else "intact"
    matched, seals = fault is None, None  # a seal fault leaves the auditor's checkpoint matched
    if status != "broken" and head is not None and (sealing or seal_secret is not None):
        seals, fault = seal_verdict(sealing, head, after_seal, seal_secret, now)
        status = "broken" if fault else status
    return {
        "verdict": status,
        "exit_code": EXIT_CODES[status],
        "path": path,
        "records": records,
        "first_ts": first_ts,
        "last_ts": head["ts"] if head else None,
        "head": {"seq": head["seq"], "hash": head["hash"]} if head else None,
        "ledger_id": genesis["ledger_id"] if genesis else None,
        "key_id": genesis["key_id"] if genesis else None,
        "checkpoints_in_ledger": in_ledger,
        "signatures_checked": check is not None,
        "checkpoint": None if cp is None else {"seq": cp["seq"], "hash": cp["hash"], "ts": cp["ts"],
                                               "matched": matched},
        "fault": fault,
        "torn_tail": torn,
        "seals": seals,
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


def check_checkpoint_record(record: dict[str, Any], head: Any, genesis: Any, check: Any) -> None:
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


def check_auditor_inputs(genesis: Any, pubkey: bytes | None, checkpoint: Any, check: Any,
                         offset: int) -> dict[str, Any] | None:
    def fault(reason: str, seq: int, line: Any, where: Any, detail: str, expected: Any, actual: Any) -> dict[str, Any]:
        return {"reason": reason, "seq": seq, "line": line, "offset": where, "detail": detail,
                "expected": expected, "actual": actual}

    if pubkey is not None and pubkey != genesis["public_key"]:
        return fault("key_mismatch", 0, 1, offset, "genesis names another key than the one given",
                     key_id(pubkey), genesis["key_id"])
    if checkpoint is None:
        return None
    body, signature = checkpoint
    if body["ledger_id"] != genesis["ledger_id"]:
        return fault("checkpoint_mismatch", 0, 1, offset, "the checkpoint names another ledger",
                     body["ledger_id"], genesis["ledger_id"])
    key = pubkey or genesis["public_key"]
    if check is not None and (body["key_id"] != key_id(key) or not check(key, canonical_bytes(body), signature)):
        return fault("bad_signature", body["seq"], None, None,
                     "the checkpoint's signature does not verify with the appliance key", key_id(key), body["key_id"])
    return None


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
    return int(v["checkpoints_in_ledger"]) + (v["checkpoint"] is not None)


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
    return "\n".join(lines + render_seals(v["seals"]))


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


def verify_package(path: str, pubkey: bytes | None = None, check: Any = None) -> dict[str, Any]:
    """Section 11's rules, in order; ``check`` is the Ed25519 checker (None: signatures not checked)."""
    state: dict[str, Any] = {"ledger_id": None, "key_id": None, "segment": None, "checkpoint": None,
                             "in_scope": None, "checkpoints_in_segment": 0, "files": {}}
    files = PackageFiles(path)
    fault = None
    try:
        check_package(files, state, pubkey, check)
    except PackageBad as bad:
        fault = bad.fault
    except OSError as exc:
        raise ValueError(f"cannot read package {path}: {exc.strerror or exc}") from None
    finally:
        files.close()
    status = "broken" if fault else "intact" if check is not None else "unchecked"
    seg, cp = state["segment"], state["checkpoint"]
    pinned = None if seg is None or cp is None else {"first_seq": seg["first_seq"], "last_seq": cp["seq"]}
    return {"verdict": status, "exit_code": EXIT_CODES[status], "path": path, "package": True,
            "ledger_id": state["ledger_id"], "key_id": state["key_id"], "signatures_checked": check is not None,
            "segment": seg, "checkpoint": cp, "pinned": pinned,
            "unpinned": None if pinned is None else seg["last_seq"] - pinned["last_seq"],
            "in_scope": state["in_scope"], "checkpoints_in_segment": state["checkpoints_in_segment"],
            "files": dict(sorted(state["files"].items())), "fault": fault}


def check_package(files: PackageFiles, state: dict[str, Any], pubkey: bytes | None, check: Any) -> None:
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
    try:
        with files.open(SEGMENT_FILE) as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                segment_line(raw, seg, first_seq, genesis, genesis_hash, cp, check)
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
    head = (f"SIGNATURES NOT CHECKED: {v['path']}: the segment's chain is intact, but the checkpoint's signature"
            " was not verified (no cryptography package)" if v["verdict"] == "unchecked"
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
              "  not proven        " + (f"what came before seq {seg['first_seq']}; " if seg["first_seq"] else "")
              + "seals (they need a whole epoch)"]
    return "\n".join(lines)


# -- Merkle tree proofs (RFC 9162 section 2.1, SHA-256), re-implemented from ledger/merkle.py's contract --
#
# Leaf i is line i without its newline; leaf hash SHA-256(0x00 || line), node SHA-256(0x01 || left || right).
# Each verifier returns {"ok", "kind", "reason", "detail"} and never raises; reason is one of bad_input,
# out_of_range, wrong_length, root_mismatch, as in the package.

MERKLE_HASH_SIZE = 32
MERKLE_EMPTY_ROOT = hashlib.sha256(b"").digest()


def merkle_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def merkle_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _proof_verdict(kind: str, reason: str | None = None, detail: str | None = None) -> dict[str, Any]:
    return {"ok": reason is None, "kind": kind, "reason": reason, "detail": detail}


def _proof_input_problem(sizes: tuple[Any, ...], hashes: tuple[Any, ...], proof: Any) -> str | None:
    if any(type(n) is not int or n < 0 for n in sizes):
        return "sizes and indices must be non-negative integers"
    if any(not isinstance(h, bytes) or len(h) != MERKLE_HASH_SIZE for h in hashes):
        return f"hashes and roots must be {MERKLE_HASH_SIZE} bytes"
    if not isinstance(proof, (list, tuple)):
        return "the proof must be a list of hashes"
    bad = [i for i, h in enumerate(proof) if not isinstance(h, bytes) or len(h) != MERKLE_HASH_SIZE]
    return f"proof hash {bad[0]} is not {MERKLE_HASH_SIZE} bytes" if bad else None


def _path_length(index: int, size: int) -> int:
    inner = (index ^ (size - 1)).bit_length()
    return inner + bin(index >> inner).count("1")


def merkle_verify_inclusion(index: Any, size: Any, leaf: Any, proof: Any, root: Any) -> dict[str, Any]:
    """RFC 9162 2.1.3.2: does ``proof`` place the leaf hash ``leaf`` at ``index`` under ``root``?"""
    if (problem := _proof_input_problem((index, size), (leaf, root), proof)) is not None:
        return _proof_verdict("inclusion", "bad_input", problem)
    if index >= size:
        return _proof_verdict("inclusion", "out_of_range", f"index {index} is not in a tree of size {size}")
    if len(proof) != (want := _path_length(index, size)):
        return _proof_verdict("inclusion", "wrong_length", f"the proof has {len(proof)} hashes, not {want}")
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
        return _proof_verdict("inclusion", "root_mismatch", f"the proof recomputes root {r.hex()}, not {root.hex()}")
    return _proof_verdict("inclusion")


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
    if (problem := _proof_input_problem((old_size, new_size), (old_root, new_root), proof)) is not None:
        return _proof_verdict(kind, "bad_input", problem)
    if old_size > new_size:
        return _proof_verdict(kind, "out_of_range", f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0 or old_size == new_size:
        if proof:
            return _proof_verdict(kind, "wrong_length", f"the proof has {len(proof)} hashes, not 0")
        if old_root != (MERKLE_EMPTY_ROOT if old_size == 0 else new_root):
            return _proof_verdict(kind, "root_mismatch", "the old root does not match the new tree")
        return _proof_verdict(kind)
    shift = (old_size & -old_size).bit_length() - 1  # the largest perfect subtree ending at the old tree's end
    power_of_two = old_size == 1 << shift
    want = _path_length(old_size - 1, new_size) - shift + (0 if power_of_two else 1)
    if len(proof) != want:
        return _proof_verdict(kind, "wrong_length", f"the proof has {len(proof)} hashes, not {want}")
    fr, sr = _consistency_chain(old_size, new_size, ([old_root] if power_of_two else []) + list(proof))
    if fr != old_root:
        return _proof_verdict(kind, "root_mismatch", f"the proof recomputes old root {fr.hex()}, not {old_root.hex()}")
    if sr != new_root:
        return _proof_verdict(kind, "root_mismatch", f"the proof recomputes new root {sr.hex()}, not {new_root.hex()}")
    return _proof_verdict(kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__[__doc__.index("Exit codes:"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ledger", nargs="?", help="a ledger file (or give --package)")
    parser.add_argument("--package", metavar="PATH",
                        help="an evidence package (its .tar, or the directory unpacked from it) instead of a ledger")
    parser.add_argument("--checkpoint", help="a checkpoint file you hold")
    parser.add_argument("--pubkey", help="the appliance.pub you hold")
    parser.add_argument("--seal-key", metavar="FILE",
                        help="the sealing secret you took away at enrollment: every seal's tag must verify")
    parser.add_argument("--now", action="store_true",
                        help="compare the last seal with this machine's clock, and report how stale it is")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    if (args.ledger is None) == (args.package is None):
        parser.error("give a ledger file or --package PATH, not both")
    if args.package is not None:
        if args.checkpoint or args.seal_key or args.now:
            parser.error("--checkpoint, --seal-key and --now are for a whole ledger; a package carries its checkpoint")
        try:
            verdict = verify_package(args.package, read_pubkey(args.pubkey) if args.pubkey else None,
                                     signature_checker())
        except (OSError, ValueError, RecursionError) as exc:
            print(f"verify_ledger: error: {exc}", file=sys.stderr)
            return 2
        emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json else render_package(verdict))
        return int(verdict["exit_code"])
    try:
        pubkey = read_pubkey(args.pubkey) if args.pubkey else None
        checkpoint = None
        if args.checkpoint:
            with open(args.checkpoint, "rb") as handle:
                checkpoint = parse_checkpoint(parse(handle.read()))
        secret = read_secret(args.seal_key) if args.seal_key else None
        now = datetime.now(UTC) if args.now else None
        verdict = verify(args.ledger, checkpoint, pubkey, seal_secret=secret, now=now)
    except (OSError, ValueError, RecursionError) as exc:
        print(f"verify_ledger: error: {exc}", file=sys.stderr)
        return 2
    emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json else render(verdict))
    return int(verdict["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
