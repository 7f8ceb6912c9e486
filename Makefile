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
LLAMA_CMAKE_ARGS := -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF -DCMAKE_C_FLAGS='$(LLAMA_CFLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CFLAGS)'
WHEELS           := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/anticloud/wheels
WHEELHOUSE       := $(WHEELS)/$(shell printf '%s' "$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS)" | sha256sum | cut -c1-12)

# The kit's llama-cpp-python is portable instead: -march=native would make a kit built on a new
# staging machine die of SIGILL on an older workstation. ggml builds one CPU backend per x86-64
# level (x64, sse42, sandybridge, ..., zen4) as a loadable module, and picks the best one the CPU
# runs at load time (anticloud/cpu.py loads them). tools/portable_wheel.py then moves the modules
# beside libggml.so and leaves the AMX one out (see above). Its own wheelhouse, keyed by its flags;
# compiled once, at low priority: 14 CPU backends take about an hour on 2 cores.
PORTABLE_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON
PORTABLE_WHEELHOUSE := $(WHEELS)/portable-$(shell printf '%s' "$(LLAMA_VERSION) $(PORTABLE_CMAKE_ARGS)" \
                       | sha256sum | cut -c1-12)
PORTABLE_WHEEL      := $(PORTABLE_WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-py3-none-linux_x86_64.whl
PORTABLE_BUILT      := $(PORTABLE_WHEELHOUSE)/built/llama_cpp_python-$(LLAMA_VERSION)-py3-none-linux_x86_64.whl

.PHONY: run test lint pytest bench kit portable-wheel test-portable clean

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

# The offline install kit (README, "Air-gapped installation"), signed with the staging key, built
# from the committed tree with the portable llama.cpp. Not part of `make test`: the compile is long.
kit: $(STAMP) $(PORTABLE_WHEEL)
	@[ -f .anticloud/staging/keys/publisher.key ] || $(VENV)/bin/anticloud keys generate --out .anticloud/staging/keys
	$(VENV)/bin/anticloud kit build --key .anticloud/staging/keys/publisher.key --wheelhouse $(PORTABLE_WHEELHOUSE)

portable-wheel: $(PORTABLE_WHEEL)

$(PORTABLE_BUILT): | $(STAMP)
	@echo "==> compiling a portable llama-cpp-python $(LLAMA_VERSION): every x86-64 CPU backend (about an hour, once)"
	@mkdir -p $(PORTABLE_WHEELHOUSE)
	rm -rf $(PORTABLE_WHEELHOUSE)/building
	CMAKE_ARGS="$(PORTABLE_CMAKE_ARGS)" nice -n 10 $(PY) -m pip wheel --verbose --no-deps --no-cache-dir \
	  -w $(PORTABLE_WHEELHOUSE)/building llama-cpp-python==$(LLAMA_VERSION) > $(PORTABLE_WHEELHOUSE)/build.log 2>&1 \
	  || { tail -n 30 $(PORTABLE_WHEELHOUSE)/build.log; exit 1; }
	mv $(PORTABLE_WHEELHOUSE)/building $(PORTABLE_WHEELHOUSE)/built

$(PORTABLE_WHEEL): $(PORTABLE_BUILT) tools/portable_wheel.py
	$(PY) tools/portable_wheel.py $(PORTABLE_BUILT) $@

# The portable wheel on emulated older CPUs (tests/test_portable.py); skipped until it is built.
test-portable: $(STAMP) $(PORTABLE_WHEEL)
	ANTICLOUD_PORTABLE_WHEELHOUSE=$(PORTABLE_WHEELHOUSE) $(PY) -m pytest tests/test_portable.py

clean:
	rm -rf $(VENV) .anticloud .anticloud.auditor .pytest_cache .mypy_cache .ruff_cache
