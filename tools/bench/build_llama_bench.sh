#!/usr/bin/env bash
# Build llama.cpp's llama-bench from the sources vendored in the same llama-cpp-python sdist the
# appliance runs, with the same flags (the Makefile's LLAMA_CFLAGS), once; print its path.
set -euo pipefail
version=${LLAMA_VERSION:-0.3.36}
cflags=${LLAMA_CFLAGS:-$([ "$(uname -m)" = x86_64 ] && echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/anticloud/llama-bench/$(printf '%s %s' "$version" "$cflags" | sha256sum | cut -c1-12)
if [ ! -x "$cache/bin/llama-bench" ]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$cache" "llama-cpp-python==$version" >&2
  tar -xzf "$cache"/llama_cpp_python-*.tar.gz -C "$cache"
  src=$(echo "$cache"/llama_cpp_python-*/vendor/llama.cpp)
  cmake -S "$src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" >&2
  cmake --build "$cache/build" --target llama-bench -j "$(nproc)" >&2
  mkdir -p "$cache/bin" && cp "$cache/build/bin/llama-bench" "$cache/bin/"
fi
echo "$cache/bin/llama-bench"
