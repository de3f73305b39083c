#!/usr/bin/env bash
# Compiles `foresight` with the `cuda` feature (compile only: no GPU is needed or used).
#   scripts/build_cuda.sh [--strip-to DIR]
# - Installs the CUDA 13 build toolchain from PyPI with ../shared/cuda/setup_cuda13_toolchain.sh
#   into $FORESIGHT_CUDA_PREFIX (default ~/.cache/foresight/cuda13), once: a marker file records
#   a finished install, so later runs skip it.
# - Builds into its own persistent target dir ($FORESIGHT_CUDA_TARGET, default
#   ~/.cache/foresight/target-cuda), apart from the CPU build, so both stay incremental.
# - With --strip-to DIR, writes the stripped binary, xz-compressed, to DIR/foresight.xz (~8 MB
#   instead of ~60 MB, so it travels to the GPU host easily; scripts/gpu_check.sh unpacks it).
# A machine with a real CUDA toolkit can skip all this: set CUDA_HOME and run cargo directly.
set -euo pipefail
cd "$(dirname "$0")/.."
STRIP_TO=""
[ "${1:-}" = "--strip-to" ] && STRIP_TO=${2:?--strip-to needs a folder}

PREFIX=${FORESIGHT_CUDA_PREFIX:-$HOME/.cache/foresight/cuda13}
SHARED=${FORESIGHT_SHARED:-$(cd .. && pwd)/shared}
[ -d "$SHARED/cuda" ] || SHARED=/work/shared
SETUP="$SHARED/cuda/setup_cuda13_toolchain.sh"
MARKER="$PREFIX/.foresight-toolchain-ok"
export CUDA_HOME="$PREFIX/py/nvidia/cu13"

if [ ! -f "$MARKER" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ] || [ ! -e "$CUDA_HOME/lib/stubs/libcublas.so" ]; then
  [ -f "$SETUP" ] || { echo "build_cuda: toolchain script not found at $SETUP (set FORESIGHT_SHARED)" >&2; exit 2; }
  echo "== installing the CUDA 13 build toolchain into $PREFIX" >&2
  cargo fetch --quiet   # the stub generator reads cudarc's sources
  rm -rf "$PREFIX"
  nice -n 19 bash "$SETUP" "$PREFIX" >&2
  date -u +%FT%TZ > "$MARKER"
fi

export PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# Link-only stubs: the real libraries are found at run time on the GPU host (RUNPATH, build.rs).
export LIBRARY_PATH="$CUDA_HOME/lib/stubs:$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR=${FORESIGHT_CUDA_TARGET:-$HOME/.cache/foresight/target-cuda}
echo "== cargo build --release --features cuda (target $CARGO_TARGET_DIR, sm_$CUDA_COMPUTE_CAP)" >&2
nice -n 19 cargo build --release --features cuda --bins

if [ -n "$STRIP_TO" ]; then
  mkdir -p "$STRIP_TO"
  strip -o "$CARGO_TARGET_DIR/release/foresight.stripped" "$CARGO_TARGET_DIR/release/foresight"
  nice -n 19 xz -6 -c "$CARGO_TARGET_DIR/release/foresight.stripped" > "$STRIP_TO/foresight.xz.tmp"
  mv "$STRIP_TO/foresight.xz.tmp" "$STRIP_TO/foresight.xz"
  ls -l "$CARGO_TARGET_DIR/release/foresight.stripped" "$STRIP_TO/foresight.xz" >&2
fi
