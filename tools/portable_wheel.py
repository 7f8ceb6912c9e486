#!/usr/bin/env python3
"""Make pip's portable llama-cpp-python wheel loadable the way anticloud loads it (Makefile, `portable-wheel`).

    python3 tools/portable_wheel.py BUILT.whl OUT.whl

llama-cpp-python 0.3.36 built with GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS compiles one
CPU backend module per x86-64 level, but installs them under the wheel's top-level ``bin/``
(ggml's install rule), not beside ``libggml.so`` in ``llama_cpp/lib/`` where
`anticloud.cpu.load_cpu_backend` loads them from. This moves them there, leaves out the
modules in `LEFT_OUT`, and rewrites the wheel's RECORD; every other member is copied as it is.
Standard library only; the output is the same bytes for the same input.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

MODULE = re.compile(r"(?:.*/)?(?P<file>libggml-cpu-(?P<variant>[a-z0-9_.]+)\.so)\Z")
DEST = "llama_cpp/lib/"
# The one variant built with Intel AMX: ggml's AMX kernels crash llama_decode (SIGSEGV in
# ggml_backend_amx_mul_mat) on CPUs that have AMX, so the native build is made without them too
# (Makefile). Without it an AMX CPU (Sapphire Rapids and later) gets the zen4 or icelake module.
LEFT_OUT = {"sapphirerapids": "Intel AMX kernels crash llama_decode"}


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(built: Path, out: Path) -> list[str]:
    """Write ``out`` from ``built``; return the variants it carries."""
    with zipfile.ZipFile(built) as source:
        members = source.infolist()
        record = next((m.filename for m in members if m.filename.endswith(".dist-info/RECORD")), None)
        if record is None:
            raise SystemExit(f"{built}: no RECORD; not a wheel")
        entries: dict[str, tuple[zipfile.ZipInfo, bytes]] = {}
        for info in members:
            if info.filename == record or info.is_dir():
                continue
            data = source.read(info)
            if match := MODULE.match(info.filename):
                if match["variant"] in LEFT_OUT:
                    continue
                info = _renamed(info, DEST + match["file"])
            if info.filename in entries and entries[info.filename][1] != data:
                raise SystemExit(f"{built}: two different files would become {info.filename}")
            entries[info.filename] = (info, data)
    variants = sorted(m["variant"] for name in entries if name.startswith(DEST) and (m := MODULE.match(name)))
    if "x64" not in variants:
        raise SystemExit(f"{built}: no baseline (x64) CPU backend module; was it built with GGML_CPU_ALL_VARIANTS?")
    lines = [_record_line(name, data) for name, (_, data) in entries.items()] + [f"{record},,"]
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in entries.values():
            target.writestr(info, data)
        target.writestr(_renamed(next(m for m in members if m.filename == record), record),
                        "\n".join(lines) + "\n")
    partial.replace(out)
    return variants


def _renamed(info: zipfile.ZipInfo, name: str) -> zipfile.ZipInfo:
    copy = zipfile.ZipInfo(name, info.date_time)
    copy.external_attr, copy.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
    return copy


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    variants = repack(Path(sys.argv[1]), Path(sys.argv[2]))
    left = ", ".join(f"{name} ({why})" for name, why in LEFT_OUT.items())
    print(f"{sys.argv[2]}: CPU backends {', '.join(variants)}; left out: {left}")


if __name__ == "__main__":
    main()
