"""The standard-library KMAC256 in tools/verify_ledger.py against NIST's published samples, hashlib's SHA-3
and pycryptodome."""

from __future__ import annotations

import hashlib

from Crypto.Hash import KMAC256, cSHAKE256
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import verify_ledger

KEY = bytes(range(0x40, 0x60))
TAG = b"My Tagged Application"

# NIST, "SP 800-185 example values", KMAC_samples.pdf: samples #4, #5 and #6 (KMAC256, L = 512).
NIST_KMAC256 = [
    (bytes(range(4)), TAG, "20C570C31346F703C9AC36C61C03CB64C3970D0CFC787E9B79599D273A68D2F7"
                           "F69D4CC3DE9D104A351689F27CF6F5951F0103F33F4F24871024D9C27773A8DD"),
    (bytes(range(200)), b"", "75358CF39E41494E949707927CEE0AF20A3FF553904C86B08F21CC414BCFD691"
                             "589D27CF5E15369CBBFF8B9A4C2EB17800855D0235FF635DA82533EC6B759B69"),
    (bytes(range(200)), TAG, "B58618F71F92E1D56C1B8C55DDD7CD188B97B4CA4D99831EB2699A837DA2E4D9"
                             "70FBACFDE50033AEA585F1A2708510C32D07880801BD182898FE476876FC8965"),
]


def test_nist_kmac256_samples() -> None:
    for data, custom, expected in NIST_KMAC256:
        assert verify_ledger.kmac256(KEY, data, 64, custom).hex().upper() == expected


def test_round_constants_follow_fips_202() -> None:
    rc = verify_ledger._RC
    assert rc[0] == 0x1 and rc[1] == 0x8082 and rc[23] == 0x8000000080008008


def test_the_sponge_is_sha3_256_and_shake256_at_every_block_boundary() -> None:
    for size in (0, 1, 134, 135, 136, 137, 271, 272, 273, 1000):
        message = (bytes(range(256)) * 4)[:size]
        assert verify_ledger._sponge(message, 0x06, 32) == hashlib.sha3_256(message).digest()
        assert verify_ledger._sponge(message, 0x1F, 300) == hashlib.shake_256(message).digest(300)


def test_encodings_follow_sp_800_185() -> None:
    assert verify_ledger.left_encode(0) == b"\x01\x00" and verify_ledger.right_encode(0) == b"\x00\x01"
    assert verify_ledger.left_encode(256) == b"\x02\x01\x00" and verify_ledger.right_encode(256) == b"\x01\x00\x02"
    assert verify_ledger.encode_string(b"KMAC") == b"\x01\x20KMAC"
    assert len(verify_ledger.bytepad(b"x", 136)) == 136


@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=32, max_size=200), data=st.binary(max_size=600), custom=st.binary(max_size=40),
       length=st.integers(min_value=8, max_value=200))
def test_kmac256_agrees_with_pycryptodome(key: bytes, data: bytes, custom: bytes, length: int) -> None:
    """pycryptodome takes keys of 32 bytes or more (KMAC256's security strength), and tags of 8 or more."""
    expected = KMAC256.new(key=key, data=data, mac_len=length, custom=custom).digest()
    assert verify_ledger.kmac256(key, data, length, custom) == expected


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=600), custom=st.binary(max_size=300), length=st.integers(min_value=1, max_value=400))
def test_cshake256_agrees_with_pycryptodome(data: bytes, custom: bytes, length: int) -> None:
    assert verify_ledger.cshake256(data, length, b"", custom) == cSHAKE256.new(data=data, custom=custom).read(length)
