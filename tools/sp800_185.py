"""Kept only so that tests/test_seal.py, which still imports ``tools.sp800_185``, runs: KMAC256
now lives in tools/verify_ledger.py, the one file an auditor needs. Delete this file once
that import reads ``from tools.verify_ledger import kmac256``."""

from tools.verify_ledger import bytepad, cshake256, encode_string, kmac256, left_encode, right_encode

__all__ = ["bytepad", "cshake256", "encode_string", "kmac256", "left_encode", "right_encode"]
