#!/usr/bin/env python3
"""Verify an anticloud ledger with nothing but the Python standard library.

This file re-implements docs/ledger-format.md independently of the appliance, so an
auditor can check a ledger without installing or trusting anticloud. Copy it anywhere.

    python3 verify_ledger.py LEDGER [--checkpoint FILE] [--pubkey FILE] [--json]

Exit codes:
  0  intact: every record and every signature verified
  1  broken: the first bad record is named
  2  the ledger, checkpoint or key file cannot be read or parsed, or bad usage
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
from datetime import datetime
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


class Bad(Exception):
    """One fault: the reason code, what went wrong, and what was expected and found."""

    def __init__(self, reason: str, detail: str, expected: Any = None, actual: Any = None) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail
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
           check: Any = signature_checker) -> dict[str, Any]:
    """The verdict on ``path``. ``check`` makes the signature checker (or returns None: none)."""
    check = check()
    records, offset, head, genesis, first_ts, in_ledger = 0, 0, None, None, None, 0
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
                                               "matched": fault is None},
        "fault": fault,
        "torn_tail": torn,
    }


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
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__[__doc__.index("Exit codes:"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ledger")
    parser.add_argument("--checkpoint", help="a checkpoint file you hold")
    parser.add_argument("--pubkey", help="the appliance.pub you hold")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    args = parser.parse_args(argv)
    try:
        pubkey = read_pubkey(args.pubkey) if args.pubkey else None
        checkpoint = None
        if args.checkpoint:
            with open(args.checkpoint, "rb") as handle:
                checkpoint = parse_checkpoint(parse(handle.read()))
        verdict = verify(args.ledger, checkpoint, pubkey)
    except (OSError, ValueError, RecursionError) as exc:
        print(f"verify_ledger: error: {exc}", file=sys.stderr)
        return 2
    emit(json.dumps(verdict, indent=2, sort_keys=True) if args.json else render(verdict))
    return int(verdict["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
