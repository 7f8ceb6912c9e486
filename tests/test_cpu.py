"""Which CPUs a llama.cpp build runs on (anticloud.cpu): the rules, on this machine's real CPU and wheels."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from anticloud.cpu import (
    BASELINE,
    ISA_FLAGS,
    NATIVE,
    PORTABLE,
    best,
    cpu_flags,
    describe,
    load_cpu_backend,
    missing,
    this_cpu,
    variants_in,
)

PORTABLE_WHEEL = ["llama_cpp/__init__.py", "llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml.so",
                  "llama_cpp/lib/libggml-base.so", "llama_cpp/lib/libggml-cpu-x64.so",
                  "llama_cpp/lib/libggml-cpu-sse42.so", "llama_cpp/lib/libggml-cpu-haswell.so"]
NATIVE_WHEEL = ["llama_cpp/__init__.py", "llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml.so",
                "llama_cpp/lib/libggml-base.so", "llama_cpp/lib/libggml-cpu.so", "llama_cpp/lib/libggml-cpu.so.0"]
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme cx8 cmov mmx fxsr sse sse2 lm pni ssse3 sse4_1 sse4_2 popcnt cx16 lahf_lm avx avx2 fma hypervisor
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""


def test_a_wheel_with_cpu_backend_modules_is_portable_and_needs_only_the_x86_64_baseline() -> None:
    build = describe(PORTABLE_WHEEL, {"avx512f", "avx2", "sse4_2"})
    assert build.build == PORTABLE and build.variants == ("haswell", "sse42", "x64")
    assert build.requires == tuple(sorted(BASELINE))  # the build machine's flags play no part
    assert build.baseline == "x86-64-v2"


def test_a_wheel_with_the_backend_linked_in_needs_every_extension_of_the_machine_that_built_it() -> None:
    build = describe(NATIVE_WHEEL, cpu_flags(CPUINFO))
    assert build.build == NATIVE and build.variants == ()
    assert {"avx2", "fma", "sse4_2", "popcnt"} <= set(build.requires) and set(BASELINE) <= set(build.requires)
    assert "hypervisor" not in build.requires and "vme" not in build.requires  # not instruction sets


def test_amx_is_never_required_since_neither_build_uses_it() -> None:
    assert not {flag for flag in ISA_FLAGS if "amx" in flag}
    assert "amx_tile" not in describe(NATIVE_WHEEL, {"amx_tile", "amx_int8", "avx2"}).requires


def test_a_wheel_without_a_cpu_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="no ggml CPU backend"):
        describe(["llama_cpp/lib/libllama.so"], set())


def test_a_portable_kit_needs_x86_64_v2_so_a_core_2_is_refused_and_a_nehalem_is_not() -> None:
    core2 = {"lm", "fpu", "cx8", "cmov", "mmx", "fxsr", "sse", "sse2", "pni", "ssse3", "cx16", "lahf_lm"}
    portable = describe(PORTABLE_WHEEL, set()).requires
    assert missing(portable, core2) == ["popcnt", "sse4_1", "sse4_2"]
    assert missing(portable, core2 | {"sse4_1", "sse4_2", "popcnt"}) == []


def test_missing_names_what_the_cpu_lacks_and_nothing_else() -> None:
    assert missing(["avx2", "sse2", "fma"], {"sse2", "fma", "avx"}) == ["avx2"]
    assert missing(BASELINE, cpu_flags(CPUINFO)) == []
    assert missing(["avx512f", "avx2"], set()) == ["avx2", "avx512f"]


def test_cpu_flags_are_the_first_processors() -> None:
    assert cpu_flags(CPUINFO) == frozenset(CPUINFO.splitlines()[2].split(":")[1].split())
    assert cpu_flags("processor : 0\n") == frozenset()


def test_this_machine_runs_the_baseline_and_its_own_native_build() -> None:
    here = this_cpu()
    assert missing(BASELINE, here) == []
    assert missing(describe(NATIVE_WHEEL, here).requires, here) == []


def test_ggml_s_rule_picks_the_highest_score_above_zero() -> None:
    assert best({"x64": 1, "sse42": 5, "haswell": 61, "skylakex": 0}) == "haswell"
    assert best({"x64": 1, "sse42": 0}) == "x64"
    assert best({"skylakex": 0}) is None and best({}) is None
    assert best({"b": 3, "a": 3}) == "a"  # a tie goes the same way every time


def test_variants_are_named_by_their_module_files_only() -> None:
    assert variants_in(["bin/libggml-cpu-icelake.so", "libggml-cpu.so", "libggml-cpu-x64.so.0"]) == ("icelake",)


def test_the_native_build_of_the_test_venv_loads_nothing_and_says_so() -> None:
    assert load_cpu_backend() is None
    assert "libggml-cpu-" not in Path("/proc/self/maps").read_text()


def test_the_makefile_s_native_wheel_is_described_as_native() -> None:
    wheelhouse = os.environ.get("ANTICLOUD_WHEELHOUSE")
    wheels = sorted(Path(wheelhouse).glob("llama_cpp_python-*.whl")) if wheelhouse else []
    if not wheels:
        pytest.skip("run through `make test`, which names the native wheelhouse")
    with zipfile.ZipFile(wheels[0]) as wheel:
        build = describe(wheel.namelist(), this_cpu())
    assert build.build == NATIVE and missing(build.requires, this_cpu()) == []
