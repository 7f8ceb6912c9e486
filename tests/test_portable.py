"""The portable kit on older CPUs: its llama.cpp wheel, installed by install.sh, run under qemu-user
emulating CPUs older than the staging machine's, through anticloud's own loader and the real CLI.

Not part of `make test`: the portable wheel takes about an hour to compile. `make test-portable`
builds it once (into its own wheelhouse) and runs this file; without it, every test here is
skipped and says why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from anticloud.cpu import BASELINE, PORTABLE, describe, this_cpu
from anticloud.identity import read_private_key
from anticloud.kit import build_kit
from anticloud.trust import generate_publisher_key
from tests.conftest import operator_imports_real_model
from tests.kits import ROOT, clone, install

WHEELHOUSE = os.environ.get("ANTICLOUD_PORTABLE_WHEELHOUSE")
WHEELS = sorted(Path(WHEELHOUSE).glob("llama_cpp_python-*.whl")) if WHEELHOUSE else []
QEMU = shutil.which("qemu-x86_64")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not WHEELS, reason="the portable llama.cpp wheel is not built: `make test-portable` builds it (about an hour, "
                       "once) and runs these tests")]
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 to emulate older CPUs (apt-get install "
                                                     "qemu-user)")

# qemu's CPU models, oldest first, and the CPU backend ggml should choose on each: x86-64-v2, the
# kit's baseline (Nehalem, 2008); AVX (2011); AVX2, FMA, BMI2 and F16C (2013).
CPUS = {"Nehalem": "sse42", "SandyBridge": "sandybridge", "Haswell-noTSX": "haswell"}
CORE2 = "lm fpu cx8 cmov mmx fxsr sse sse2 pni ssse3 cx16 lahf_lm"  # x86-64 without SSE4.2 or POPCNT
CHOOSE = "from anticloud.cpu import load_cpu_backend; print(load_cpu_backend())"


def test_the_portable_wheel_carries_a_backend_per_x86_64_level_but_not_the_amx_one() -> None:
    with zipfile.ZipFile(WHEELS[0]) as wheel:
        names = wheel.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        for line in wheel.read(record).decode().splitlines():  # the rewritten RECORD is right
            name, digest, size = line.rsplit(",", 2)
            if name != record:
                data = wheel.read(name)
                expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={expected}" and int(size) == len(data), name
    build = describe(names, this_cpu())
    assert build.build == PORTABLE and build.requires == tuple(sorted(BASELINE))
    assert {"x64", "sse42", "sandybridge", "haswell", "skylakex", "icelake", "zen4", "alderlake"} <= set(build.variants)
    assert "sapphirerapids" not in build.variants  # the AMX kernels that crash llama_decode
    assert all(n.startswith("llama_cpp/lib/") for n in names if "libggml-cpu-" in n)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A portable kit of this checkout's commit, installed offline by its install.sh."""
    base = tmp_path_factory.mktemp("portable")
    generate_publisher_key(base / "keys")
    kit = build_kit(read_private_key(base / "keys" / "publisher.key"), base / "kit", Path(WHEELHOUSE or ""),
                    source=clone(base)).path
    target = json.loads((kit / "files" / "kit.json").read_text())
    assert target["cpu"]["build"] == "portable" and target["cpu"]["requires"] == sorted(BASELINE)
    assert target["cpu"]["baseline"] == "x86-64-v2"
    sbom = json.loads((kit / "files" / "sbom.cdx.json").read_text())
    llama = next(c for c in sbom["components"] if c["name"] == "llama_cpp_python")
    properties = {p["name"]: p["value"] for p in llama["properties"]}
    assert properties["anticloud:cpu_build"] == "portable" and properties["anticloud:cpu_baseline"] == "x86-64-v2"
    assert properties["anticloud:cpu_variants"].split() == target["cpu"]["variants"]
    pubkey = str(base / "keys" / "publisher.pub")
    core2 = base / "core2"  # older than the baseline: refused, naming what it lacks
    core2.write_text(f"processor\t: 0\nflags\t\t: {CORE2}\n")
    refused = install(kit, base / "opt", "--pubkey", pubkey, cpuinfo=core2)
    assert refused.returncode == 1 and "this CPU lacks popcnt sse4_1 sse4_2" in refused.stderr, refused.stderr
    # A CPU with nothing but the baseline: a native kit would be refused here, this one is not.
    oldest = base / "cpuinfo"
    oldest.write_text(f"processor\t: 0\nflags\t\t: {' '.join(BASELINE)}\n")
    run = install(kit, base / "opt", "--pubkey", pubkey, cpuinfo=oldest)
    assert run.returncode == 0, run.stderr
    assert "llama.cpp: portable build; this CPU runs its " in run.stdout
    return base / "opt"


@needs_qemu
@pytest.mark.parametrize("cpu", list(CPUS))
def test_each_older_cpu_gets_the_best_backend_it_can_run(installed: Path, cpu: str) -> None:
    run = subprocess.run([QEMU or "", "-cpu", cpu, str(installed / "bin" / "python"), "-c", CHOOSE],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == CPUS[cpu]


@needs_qemu
def test_the_appliance_answers_on_the_oldest_cpu_the_kit_accepts(
        installed: Path, smollm2_path: Path, tmp_path: Path) -> None:
    """The installed CLI, its engine, its loader and llama.cpp's sse42 backend, on an emulated Nehalem (2008)."""
    home = operator_imports_real_model(tmp_path, smollm2_path, "smollm2-135m")
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--net", QEMU or "", "-cpu", "Nehalem",
                          str(installed / "bin" / "python"), "-m", "anticloud", "--home", str(home.root), "run",
                          "smollm2-135m",
                          "Name a colour.", "--num-predict", "4", "--temperature", "0"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), "no answer"
    ledger = home.ledger.read_text()
    assert '"kind":"inference.end"' in ledger


@needs_qemu
def test_below_the_baseline_a_dependency_of_llama_cpp_dies_which_is_why_install_sh_refuses_it(
        installed: Path) -> None:
    """numpy's wheels need x86-64-v2: on an emulated Core 2 (Conroe), importing it is an illegal instruction."""
    run = subprocess.run([QEMU or "", "-cpu", "Conroe", str(installed / "bin" / "python"), "-c", "import numpy"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode in (-4, 132), (run.returncode, run.stderr[-500:])  # SIGILL


@needs_qemu
def test_the_native_build_dies_on_an_older_cpu_which_is_why_kits_are_portable(smollm2_path: Path) -> None:
    """The control: the Makefile's -march=native wheel (this venv's) under the same emulation, killed by SIGILL."""
    if "avx2" not in this_cpu():
        pytest.skip("this machine's native build uses no AVX2, so an emulated Nehalem may run it")
    generate = ("import sys; from llama_cpp import Llama; "
                "Llama(model_path=sys.argv[1], n_ctx=64, verbose=False).create_completion('Hi', max_tokens=2)")
    python = ROOT / ".venv" / "bin" / "python"
    run = subprocess.run([QEMU or "", "-cpu", "Nehalem", str(python), "-c", generate, str(smollm2_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode in (-4, 132), (run.returncode, run.stderr[-500:])  # SIGILL: an illegal instruction
