#!/usr/bin/env bash
# Build one of llama.cpp's programs, llama-bench (the default) or llama-server, from the sources
# vendored in the same llama-cpp-python sdist the appliance runs, with the same flags (the
# Makefile's LLAMA_CFLAGS), once; print its path. Both share one source tree and build directory,
# keyed by the version and the flags.
#
#   bash tools/bench/build_llama_bench.sh [llama-bench|llama-server]
#
# llama-server is built without curl, OpenSSL or its web UI: nothing in the build reaches the network.
set -euo pipefail
target=${1:-llama-bench}
case $target in
  llama-bench | llama-server) ;;
  *) echo "usage: $0 [llama-bench|llama-server]" >&2; exit 2 ;;
esac
version=${LLAMA_VERSION:-0.3.36}
cflags=${LLAMA_CFLAGS:-$([ "$(uname -m)" = x86_64 ] && echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/anticloud/llama-bench/$(printf '%s %s' "$version" "$cflags" | sha256sum | cut -c1-12)
if [ ! -x "$cache/bin/$target" ]; then
  mkdir -p "$cache"
  if ! compgen -G "$cache/llama_cpp_python-*/vendor/llama.cpp" >/dev/null; then
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$cache" "llama-cpp-python==$version" >&2
    tar -xzf "$cache"/llama_cpp_python-*.tar.gz -C "$cache"
  fi
  src=$(echo "$cache"/llama_cpp_python-*/vendor/llama.cpp)
  cmake -S "$src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" >&2
  cmake --build "$cache/build" --target "$target" -j "$(nproc)" >&2
  mkdir -p "$cache/bin" && cp "$cache/build/bin/$target" "$cache/bin/"
fi
echo "$cache/bin/$target"
