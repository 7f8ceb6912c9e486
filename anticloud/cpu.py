"""The CPUs a llama.cpp build runs on, and loading the CPU backend that fits this one.

A llama-cpp-python wheel carries one of two builds of ggml's CPU backend:

* **portable**: one loadable module per x86-64 level, ``libggml-cpu-<variant>.so`` beside
  ``libggml.so`` (ggml's ``GGML_BACKEND_DL`` with ``GGML_CPU_ALL_VARIANTS``). Each module
  scores the CPU it finds itself on (0: it cannot run there) and the best one is loaded. The
  rest of the library is compiled for the x86-64 baseline, and so is the ``x64`` module, which
  runs anywhere. A kit carrying it needs `BASELINE`, x86-64-v2, all the same: numpy (which
  llama-cpp-python imports) ships its wheels built for x86-64-v2 since 2.4, and dies of SIGILL
  below it (`tests/test_portable.py` shows both).
* **native**: one ``libggml-cpu.so`` linked in, compiled by the Makefile with ``-march=native``
  for the machine that built it; it needs every instruction-set extension that machine has
  (`ISA_FLAGS`), and dies of SIGILL on a CPU without one.

Invariants:

* `missing` is the one rule for "can this CPU run that build": every flag the build requires
  must be in the CPU's ``/proc/cpuinfo`` flags. A kit states its build's required flags in
  its signed ``kit.json`` (`describe`), and ``install.sh``, which cannot import this package,
  only takes that list's difference with the CPU's flags.
* A portable build's modules are loaded from the ``llama_cpp`` package's own directory only,
  by absolute path (`load_cpu_backend`), before llama.cpp would look for them itself in the
  working directory and beside the Python executable, where anyone able to write there could
  plant a ``libggml-cpu-*.so`` to run inside the engine.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from anticloud.errors import EngineError

# The x86-64 psABI levels, in /proc/cpuinfo's names. x86-64 is what any x86-64 Linux machine has,
# and what GCC's default -march=x86-64 may use (SYSCALL and OSFXSR are left out: a 64-bit Linux
# cannot run without them, and older kernels do not list them on every vendor's CPU). x86-64-v2
# adds SSE3 to SSE4.2, POPCNT, CMPXCHG16B and LAHF: every x86-64 CPU since about 2009.
X86_64 = ("lm", "fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2")
X86_64_V2 = (*X86_64, "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm")
BASELINE, BASELINE_NAME = X86_64_V2, "x86-64-v2"  # what a portable kit needs, numpy's wheels included

# /proc/cpuinfo flags that name instruction-set extensions a compiler may use under -march=native
# (in generated code, or through the intrinsics the build enables). Not those only the kernel or
# an explicit intrinsic for another purpose uses (xsave*, rdrand, clflushopt, ...), which would
# refuse CPUs for nothing; not AMX, which the Makefile builds without (-mno-amx-*).
ISA_FLAGS = frozenset({
    "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "sse4a", "popcnt", "abm", "cx16", "lahf_lm", "movbe",
    "aes", "pclmulqdq", "vaes", "vpclmulqdq", "gfni", "sha_ni", "avx", "avx2", "fma", "fma4", "xop", "tbm", "f16c",
    "bmi1", "bmi2", "avx_vnni", "avx_vnni_int8", "avx_ifma", "avx_ne_convert",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
    "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16"})

PORTABLE, NATIVE = "portable", "native"
_VARIANT = re.compile(r"(?:.*/)?libggml-cpu-(?P<variant>[a-z0-9_.]+)\.so\Z")
_LINKED_IN = re.compile(r"(?:.*/)?libggml-cpu\.so\Z")


@dataclass(frozen=True)
class CpuBuild:
    """Which llama.cpp CPU build a wheel carries, and the /proc/cpuinfo flags it needs."""

    build: str  # PORTABLE or NATIVE
    requires: tuple[str, ...]
    variants: tuple[str, ...] = ()
    baseline: str | None = None  # the x86-64 level named by `requires`, for a portable build

    def as_json(self) -> dict[str, object]:
        return {"build": self.build, "baseline": self.baseline, "requires": list(self.requires),
                "variants": list(self.variants)}


def variants_in(names: Iterable[str]) -> tuple[str, ...]:
    """The CPU backend modules among file names (a wheel's members, a directory's entries), sorted."""
    return tuple(sorted({m["variant"] for name in names if (m := _VARIANT.match(name))}))


def describe(names: Iterable[str], build_machine_flags: Iterable[str]) -> CpuBuild:
    """The CPU build of a llama-cpp-python wheel, from its member names. Pure.

    A wheel with CPU backend modules is portable, and its kit needs `BASELINE`; one with the
    backend linked in is taken to be the Makefile's -march=native build of the machine whose
    flags are given, and needs every instruction-set extension that machine has.
    """
    names = list(names)
    if found := variants_in(names):
        return CpuBuild(PORTABLE, tuple(sorted(BASELINE)), found, BASELINE_NAME)
    if not any(_LINKED_IN.match(name) for name in names):
        raise ValueError("the wheel holds no ggml CPU backend (neither libggml-cpu.so nor libggml-cpu-*.so)")
    return CpuBuild(NATIVE, tuple(sorted(set(BASELINE) | (ISA_FLAGS & set(build_machine_flags)))))


def missing(requires: Iterable[str], flags: Iterable[str]) -> list[str]:
    """The required flags this CPU lacks, sorted; empty when it can run the build. Pure."""
    return sorted(set(requires) - set(flags))


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in the text of /proc/cpuinfo. Pure."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def this_cpu() -> frozenset[str]:
    """This machine's CPU flags, from /proc/cpuinfo."""
    return cpu_flags(Path("/proc/cpuinfo").read_text())


def best(scores: dict[str, int]) -> str | None:
    """The variant to load: the highest score above 0 (ggml's rule), ties to the first name. Pure."""
    ranked = sorted((-score, name) for name, score in scores.items() if score > 0)
    return ranked[0][1] if ranked else None


def load_cpu_backend() -> str | None:
    """Load the best CPU backend of a portable build that this CPU runs; return its variant.

    Returns None for a native build, whose backend is linked in. Idempotent: once llama.cpp has
    a backend registered, nothing more is loaded (and llama.cpp's own search never runs).
    """
    import llama_cpp

    # llama_cpp's handle on libllama: symbols are looked up there and in what it links, so these
    # are the very libggml the engine uses (the wheel also holds copies under other names, which
    # dlopen would load a second time). llama-cpp-python offers no public handle.
    lib = llama_cpp.llama_cpp._lib  # noqa: SLF001
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_load.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_load.restype = ctypes.c_void_p
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    modules = {variant: lib_dir / f"libggml-cpu-{variant}.so" for variant in variants_in(os.listdir(lib_dir))}
    global _loaded
    with _choosing:
        if not modules or _loaded is not None:
            return _loaded
        _loaded = _choose(lib, lib_dir, modules)
        return _loaded


def _choose(lib: ctypes.CDLL, lib_dir: Path, modules: dict[str, Path]) -> str:
    if lib.ggml_backend_reg_count() != 0:
        raise EngineError("llama.cpp loaded its CPU backend before anticloud chose one")
    scores = {}
    for variant, path in modules.items():
        # Each module's score function is compiled for the baseline: it runs on any x86-64 CPU.
        score = ctypes.CDLL(str(path)).ggml_backend_score
        score.restype = ctypes.c_int
        scores[variant] = score()
    chosen = best(scores)
    if chosen is None or not lib.ggml_backend_load(str(modules[chosen]).encode()):
        raise EngineError(f"none of llama.cpp's CPU backends in {lib_dir} ({', '.join(modules)}) runs on this CPU")
    return chosen


_loaded: str | None = None
_choosing = threading.Lock()
