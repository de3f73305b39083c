#!/usr/bin/env bash
# The GPU checks, in one run on the GPU host (H100/H200, sm_90), from the repository root:
#   1. environment: GPUs, the CUDA libraries found, ldd of the binary;
#   2. foresight bench-gpu --check: GPU-vs-CPU logits (bf16 tolerance), fused-vs-plain attention,
#      greedy speculative == plain on the GPU, then prefill / decode / completion / training for
#      the 1B-class preset (and models/default when present);
#   3. scripts/hf_baseline.py: transformers `generate` (eager and sdpa) on the identical config.
# Everything goes under $OUT (default ./gpu_out): *.json, *.log, nvidia-smi.txt, gpu_mem.csv, summary.txt.
# Needs: the cuda binary at $FORESIGHT_BIN, or else dist/gpu/foresight.xz (made here by
# `scripts/build_cuda.sh --strip-to dist/gpu`, unpacked into $OUT/..), and for step 3 a python with torch + transformers
# ($HF_PYTHON, default /opt/torch/.venv/bin/python3). Bounded to ~9 minutes in all.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
PY=${HF_PYTHON:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3 || true)
BIN=${FORESIGHT_BIN:-}
if [ -z "$BIN" ] && [ -f dist/gpu/foresight.xz ]; then
  BIN=$(mktemp -d)/foresight
  { xz -dc dist/gpu/foresight.xz 2>/dev/null || "$PY" -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' dist/gpu/foresight.xz; } > "$BIN"
  chmod +x "$BIN"
fi
BIN=${BIN:-dist/gpu/foresight}
T0=$(date +%s)
say() { echo "$*" | tee -a "$OUT/summary.txt" >&2; }
: > "$OUT/summary.txt"

say "== GPUs"
timeout 20 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 20 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt" >&2

# CUDA 13 pip libraries and the driver's libcuda on LD_LIBRARY_PATH.
. scripts/cuda_libs.sh
say "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
[ -x "$BIN" ] || { say "FAIL: no binary at $BIN (build it with scripts/build_cuda.sh --strip-to dist/gpu)"; exit 2; }
ldd "$BIN" 2>&1 | grep -E 'cuda|cublas|curand|nvrtc|not found' | tee -a "$OUT/summary.txt" >&2

# Device memory, sampled every 200 ms, for the peak during training.
timeout 560 nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 200 > "$OUT/gpu_mem.csv" 2>/dev/null &
SMI=$!

MODELS=()
[ -f models/default/config.json ] && MODELS=(--model models/default)
say "== foresight bench-gpu --check"
export RUST_BACKTRACE=1 RUST_LIB_BACKTRACE=0 FORESIGHT_LOG=${FORESIGHT_LOG:-warn}   # backtraces for panics only
timeout 330 "$BIN" bench-gpu --device cuda --preset 1b,tiny "${MODELS[@]}" --check --budget-secs 270 \
  --out "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.log"
RC_BENCH=$?
say "bench-gpu exit $RC_BENCH ($(( $(date +%s) - T0 )) s); log tail:"
tail -5 "$OUT/bench_gpu.log" | tee -a "$OUT/summary.txt" >&2

RC_HF=99
if [ -n "$PY" ] && [ -f "$OUT/bench_gpu.json" ]; then
  say "== transformers baseline"
  LEFT=$(( 540 - ($(date +%s) - T0) )); [ "$LEFT" -lt 60 ] && LEFT=60
  timeout "$LEFT" "$PY" scripts/hf_baseline.py --report "$OUT/bench_gpu.json" --out "$OUT/hf_baseline.json" 2> "$OUT/hf_baseline.log"
  RC_HF=$?
  say "hf_baseline exit $RC_HF ($(( $(date +%s) - T0 )) s); log tail:"
  tail -8 "$OUT/hf_baseline.log" | tee -a "$OUT/summary.txt" >&2
fi
kill "$SMI" 2>/dev/null
[ -s "$OUT/gpu_mem.csv" ] && say "peak device memory used (nvidia-smi): $(awk -F', ' '{gsub(/ MiB/,"",$2); if ($2>m) m=$2} END {print m}' "$OUT/gpu_mem.csv") MiB"

# A readable digest of both reports.
if [ -n "$PY" ]; then
  "$PY" - "$OUT" <<'PYEOF' 2>&1 | tee -a "$OUT/summary.txt" >&2
import json, os, sys
out = sys.argv[1]
try:
    r = json.load(open(os.path.join(out, "bench_gpu.json")))
except Exception as e:
    print("no bench_gpu.json:", e); sys.exit()
for t in r["targets"]:
    print(f"-- foresight {t['name']}: {t['parameters']/1e9:.2f}B params, plain-step floor {t['plain_step_floor_ms']:.3f} ms")
    for p in t["prefill"]: print(f"   prefill {p['tokens']}: {p['tokens_per_s']:.0f} tok/s")
    for d in t["decode"]: print(f"   decode {d['mode']}: {d['ms_per_token']:.3f} ms/token ({d['tokens_per_forward']:.2f} tok/fwd, {d['ms_per_forward']:.3f} ms/fwd)")
    for c in t["completion"]: print(f"   completion {c['mode']}: {c['latency_ms']:.1f} ms ({c['prompt_tokens']}+{c['new_tokens']})")
    if t.get("train"): print(f"   train: {t['train']['tokens_per_s']:.0f} tok/s, device mem {t['train']['device_mem_used_bytes']}")
    for c in t["checks"]: print(f"   check {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {json.dumps(c['detail'])}")
    for s in t["skipped"]: print(f"   skipped: {s}")
try:
    h = json.load(open(os.path.join(out, "hf_baseline.json")))
    for run in h["runs"]:
        print(f"-- transformers {h['transformers']} torch {h['torch']} ({run['attn_implementation']}):")
        for p in run["prefill"]: print(f"   prefill {p['tokens']}: {p['tokens_per_s']:.0f} tok/s")
        print(f"   decode: {run['decode']['ms_per_token']:.3f} ms/token; completion: {run['completion']['latency_ms']:.1f} ms")
    if h.get("train"): print(f"   train: {h['train']['tokens_per_s']:.0f} tok/s, peak {h['train']['peak_memory_bytes']/2**30:.1f} GiB")
except Exception as e:
    print("no hf_baseline.json:", e)
PYEOF
fi
say "== done in $(( $(date +%s) - T0 )) s: bench-gpu rc=$RC_BENCH, hf_baseline rc=$RC_HF"
[ "$RC_BENCH" -eq 0 ] && [ "$RC_HF" -eq 0 ]
