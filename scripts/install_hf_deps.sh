#!/usr/bin/env bash
# Installs, once, the Python packages the Hugging Face parity test needs: CPU-only PyTorch and
# transformers, in a venv at $FORESIGHT_HF_VENV (default ~/.cache/foresight/venv-hf).
#   scripts/install_hf_deps.sh      -> last stdout line: "python=/path/to/venv/bin/python"
#                                      or "unavailable: REASON" (exit 3); progress goes to stderr.
# Lightest install that works here: PyPI's Linux torch wheel (540 MB, pinned) with --no-deps, so
# none of its 3+ GB of NVIDIA wheels; scripts/torch_stubs.py then generates link-only stand-ins
# for those libraries so `import torch` works on the CPU. Idempotent: a marker file with the
# pinned versions is written last, and a run that finds it does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FORESIGHT_HF_VENV:-$HOME/.cache/foresight/venv-hf}
TORCH=2.15.0
TRANSFORMERS=5.24.0
PINS="torch==$TORCH transformers==$TRANSFORMERS stubs-v1"
MARKER="$VENV/.foresight-hf-deps"

unavailable() { echo "unavailable: $*"; exit 3; }

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$PINS" ] && "$VENV/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  echo "python=$VENV/bin/python"
  exit 0
fi

PY=""
for p in python3.11 python3.12 python3.13 python3.10 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import sys, venv; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))' 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || unavailable "no python3 between 3.10 and 3.13 with venv"
command -v gcc >/dev/null || unavailable "gcc is needed to build the torch library stand-ins"
command -v nm >/dev/null || unavailable "nm (binutils) is needed to read torch's symbols"
[ "$(uname -s -m)" = "Linux x86_64" ] || unavailable "only Linux x86_64 is set up ($(uname -s -m))"

echo "== installing torch $TORCH (CPU use, no NVIDIA wheels) and transformers $TRANSFORMERS into $VENV" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV" >&2 || unavailable "cannot create a venv with $PY"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
nice -n 19 "${PIP[@]}" --no-deps "torch==$TORCH" >&2 || unavailable "pip cannot install torch==$TORCH --no-deps"
nice -n 19 "${PIP[@]}" filelock "typing-extensions>=4.13" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" numpy \
  "transformers==$TRANSFORMERS" >&2 || unavailable "pip cannot install transformers==$TRANSFORMERS and torch's Python deps"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$VENV/bin/python" scripts/torch_stubs.py "$SITE" >&2 || unavailable "building the torch library stand-ins failed"
"$VENV/bin/python" -c 'import torch, transformers; assert (torch.ones(2) @ torch.ones(2)).item() == 2' >&2 \
  || unavailable "torch or transformers does not import after install"
echo "$PINS" > "$MARKER"
echo "python=$VENV/bin/python"
