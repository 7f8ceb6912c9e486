"""KMAC256 from the standard library alone: Keccak-f[1600] (FIPS 202), cSHAKE256 and KMAC256 (NIST SP 800-185).

The auditor's verifier must check seals without installing anything, and ``hashlib`` offers
SHAKE256 but not cSHAKE or KMAC (it cannot take the function-name and customisation prefix
that makes them distinct). This module writes them from the two standards' texts:

* FIPS 202, section 3: the state as 5x5 lanes of 64 bits, the step mappings theta, rho, pi,
  chi and iota, 24 rounds; section 4: the sponge with pad10*1.
* SP 800-185, section 2.3: ``left_encode``, ``right_encode``, ``encode_string``, ``bytepad``;
  section 3: cSHAKE256, whose padding bits are 00 instead of SHAKE's 1111 (and which is
  SHAKE256 itself when both strings are empty); section 4: KMAC256.

It is tested against NIST's published KMAC samples and against pycryptodome on random input
(tests/test_sp800_185.py). It is slow (pure Python, about 250 KB/s here): the seals it checks are
short records, one per epoch.
"""

from __future__ import annotations

import hashlib

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
