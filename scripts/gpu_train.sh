#!/usr/bin/env bash
# Trains the default model further on a GPU in ONE device call, and verifies the CUDA path on the way.
#
#   scripts/gpu_train.sh --pack [CORPUS_DIR]   here, before the call: dist/gpu/corpus.tar.xz from the
#                                              corpus (default ~/.cache/foresight/corpus/files); with
#                                              scripts/build_cuda.sh --strip-to dist/gpu for the binary
#   scripts/gpu_train.sh                       on the GPU host, from the repository root ($OUT set)
#   scripts/gpu_train.sh --dry-run             the same steps on the CPU: the CPU binary, a tiny model,
#                                              a 60 s budget, this repository's src/ as the corpus (CI)
#
# On the GPU host, inside about 9 minutes of wall clock:
#   1. unpacks the carried binary (dist/gpu/foresight.xz) and corpus (dist/gpu/corpus.tar.xz);
#   2. device checks: `foresight bench-gpu --check` on the tiny preset and models/default (GPU vs CPU
#      logits within bf16 tolerance, fused vs plain attention, greedy speculative == plain), recorded,
#      and the script goes on whatever they say;
#   3. a 45 s training probe (tokens/s, recorded), then `foresight train --device cuda --base
#      models/default --time-budget` for the rest of the budget: warmup, constant learning rate, and
#      a decay over the last fifth of the budget by elapsed time, so the schedule ends on time;
#      checkpoints every 200 steps in a work folder;
#   4. writes under $OUT the final model (bf16, shards of at most 15 MiB, index, config, tokenizer),
#      its metrics, the check results and summary.txt (probe tokens/s, exit codes): at most 8 files,
#      none over 16 MiB.
#      If training did not finish, $OUT/summary.txt says so and names the last checkpoint (f32, on
#      the host only: it is larger than a returned file may be).
# Settings (environment): TRAIN_SECS (default 330), BATCH (32), LR (3e-4), BASE (models/default).
set -u
cd "$(dirname "$0")/.."
MODE=gpu
[ "${1:-}" = "--dry-run" ] && MODE=dry
[ "${1:-}" = "--pack" ] && MODE=pack

if [ "$MODE" = pack ]; then
  SRC=${2:-$HOME/.cache/foresight/corpus/files}
  [ -d "$SRC" ] || { echo "gpu_train: no corpus at $SRC (python3 scripts/build_corpus.py ~/.cache/foresight/corpus)" >&2; exit 2; }
  mkdir -p dist/gpu
  echo "gpu_train: packing $SRC into dist/gpu/corpus.tar.xz ..." >&2
  tar -C "$SRC" -cf - . | xz -6 -T2 > dist/gpu/corpus.tar.xz.tmp && mv dist/gpu/corpus.tar.xz.tmp dist/gpu/corpus.tar.xz
  SIZE=$(stat -c %s dist/gpu/corpus.tar.xz)
  echo "gpu_train: dist/gpu/corpus.tar.xz is $((SIZE >> 20)) MiB" >&2
  [ "$SIZE" -le $((40 << 20)) ] || { echo "gpu_train: over 40 MiB: the working tree sent to the device is capped at 64 MiB" >&2; exit 3; }
  exit 0
fi

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
T0=$(date +%s)
: > "$OUT/summary.txt"
say() { echo "$*" | tee -a "$OUT/summary.txt" >&2; }
left() { echo $(( BUDGET_TOTAL - ($(date +%s) - T0) )); }

if [ "$MODE" = dry ]; then
  DEVICE=cpu
  BUDGET_TOTAL=400   # generous: CI machines are shared, and the dry run checks the steps, not the timing
  TRAIN_SECS=${TRAIN_SECS:-60}
  PROBE_SECS=10
  BATCH=${BATCH:-4}
  SEQ=128
  BIN=${FORESIGHT_BIN:-${CARGO_TARGET_DIR:-target}/release/foresight}
  CORPUS=src
  # A tiny random model shaped like the default (its tokenizer, FIM tokens and 4 heads): what
  # matters here is that every step of the call runs and writes what it should.
  BASE_DIR="$WORK/tiny-base"
  "$BIN" train --repo src --config tiny --heads 3 --new-tokenizer 512 --seq-len 64 --batch-size 2 \
    --steps 1 --out "$BASE_DIR" --no-progress --no-token-cache > "$WORK/tiny-base.log" 2>&1 \
    || { say "FAIL: could not make the tiny base model"; cat "$WORK/tiny-base.log" >&2; exit 2; }
  BASE=${BASE:-$BASE_DIR}
  CHECK_MODELS=(--model "$BASE")
else
  DEVICE=cuda
  BUDGET_TOTAL=540
  TRAIN_SECS=${TRAIN_SECS:-330}
  PROBE_SECS=45
  BATCH=${BATCH:-32}
  SEQ=512
  BASE=${BASE:-models/default}
  CHECK_MODELS=(--model "$BASE")
  BIN=${FORESIGHT_BIN:-}
  if [ -z "$BIN" ] && [ -f dist/gpu/foresight.xz ]; then
    BIN="$WORK/foresight"
    xz -dc dist/gpu/foresight.xz > "$BIN" && chmod +x "$BIN"
  fi
  [ -x "${BIN:-}" ] || { say "FAIL: no binary (scripts/build_cuda.sh --strip-to dist/gpu, carried as dist/)"; exit 2; }
  [ -f dist/gpu/corpus.tar.xz ] || { say "FAIL: no dist/gpu/corpus.tar.xz (scripts/gpu_train.sh --pack)"; exit 2; }
  CORPUS="$WORK/corpus"
  mkdir -p "$CORPUS" && tar -C "$CORPUS" -xJf dist/gpu/corpus.tar.xz
  # The CUDA 13 pip libraries and the driver's libcuda on LD_LIBRARY_PATH.
  PY=${HF_PYTHON:-/opt/torch/.venv/bin/python3}
  [ -x "$PY" ] || PY=$(command -v python3 || true)
  . scripts/cuda_libs.sh
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt" >&2
fi
say "== gpu_train ($MODE): binary $BIN, base $BASE, corpus $CORPUS ($(du -sh "$CORPUS" | cut -f1))"

# 2. Device checks; the script goes on whatever they say.
say "== device checks (bench-gpu --check)"
timeout 150 "$BIN" bench-gpu --device "$DEVICE" --preset tiny "${CHECK_MODELS[@]}" --check --budget-secs 60 \
  --prompt-tokens 256 --new-tokens 32 --prefill 256 --repeats 1 --train-steps 0 \
  --out "$OUT/checks.json" > "$WORK/checks.log" 2>&1
say "checks exit $? ($(( $(date +%s) - T0 )) s)"
[ -f "$OUT/checks.json" ] || say "FAIL: no checks.json; log tail: $(tail -3 "$WORK/checks.log")"

COMMON=(--repo "$CORPUS" --base "$BASE" --device "$DEVICE" --seq-len "$SEQ" --batch-size "$BATCH"
  --lr "${LR:-3e-4}" --eval-batches 4 --no-progress --token-cache "$WORK/tokens")

# 3a. Probe: training tokens/s on this device (also fills the token cache for the real run).
say "== probe: ${PROBE_SECS} s of training"
timeout $((PROBE_SECS + 120)) "$BIN" train "${COMMON[@]}" --out "$WORK/probe" --time-budget "$PROBE_SECS" \
  --warmup-steps 5 --eval-every 0 --checkpoint-every 0 > "$WORK/probe.log" 2>&1
RC=$?
PROBE_STEPS=$(grep -c '"kind":"train"' "$WORK/probe/metrics.jsonl" 2>/dev/null); : "${PROBE_STEPS:=0}"
PROBE_TOKS=$(grep '"kind":"train"' "$WORK/probe/metrics.jsonl" 2>/dev/null | tail -1 | grep -o '"tokens_per_s":[0-9.]*' | cut -d: -f2)
say "probe exit $RC: $PROBE_STEPS steps, last step ${PROBE_TOKS:-?} tokens/s (batch $BATCH x $SEQ)"

# 3b. The run, with the budget that is left (keeping a margin for validation and saving).
SECS=$(( $(left) - 60 ))
[ "$SECS" -gt "$TRAIN_SECS" ] && SECS=$TRAIN_SECS
[ "$SECS" -lt 10 ] && SECS=10
say "== training for $SECS s (--time-budget)"
timeout -k 20 -s INT $((SECS + 90)) "$BIN" train "${COMMON[@]}" --out "$WORK/run" --time-budget "$SECS" \
  --warmup-steps 50 --eval-every 200 --checkpoint-every 200 --save-bf16 --shard-mib 15 \
  > "$WORK/run.log" 2>&1
RC=$?
say "train exit $RC ($(( $(date +%s) - T0 )) s); $(tail -2 "$WORK/run.log" | tr '\n' ' ')"

# 4. What comes back.
if [ -f "$WORK/run/model.safetensors.index.json" ]; then
  cp "$WORK"/run/model-*.safetensors "$WORK/run/model.safetensors.index.json" "$WORK/run/config.json" "$WORK/run/tokenizer.json" "$OUT/"
  say "model: $(ls "$OUT"/model-*.safetensors | wc -l) shard(s) in $OUT"
else
  say "FAIL: training did not finish; last checkpoint on the host: $(cat "$WORK/run/checkpoints/latest" 2>/dev/null || echo none)"
fi
[ -f "$WORK/run/metrics.jsonl" ] && cp "$WORK/run/metrics.jsonl" "$OUT/metrics.jsonl"
say "== done in $(( $(date +%s) - T0 )) s; files: $(ls "$OUT" | tr '\n' ' ')"
[ -f "$OUT/model.safetensors.index.json" ]
