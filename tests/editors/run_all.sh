#!/usr/bin/env bash
# End-to-end tests of the editor integrations in the real editors, headless, against the real
# `foresight serve` with the deterministic tiny test model:
#   nvim-0.12  Neovim 0.12: ghost text appears; <Tab> accepts it, <M-Right> a word, <C-]> dismisses
#   nvim-0.11  Neovim 0.11: the completion-menu fallback inserts the suggestion
#   vscode     VS Code (code-server + headless Chromium): the extension activates, the inline
#              suggestion is shown, and commit inserts it
#   emacs      Emacs 30 + eglot: completion-at-point offers and inserts the suggestion
#   helix      Helix through tmux: the completion menu shows the suggestion; accepting inserts it
#
# usage: tests/editors/run_all.sh [EDITOR...]      (default: all of the above)
# Installs each editor first with scripts/install_*.sh (idempotent; caches under
# $HOME/.cache/foresight/). FORESIGHT_BIN picks the server binary (default: build it with
# cargo build --release). Logs go to $FORESIGHT_E2E_LOGS (default: a temporary folder).
# Prints one PASS/FAIL line per check and ends with "N passed, N failed" (editors, not checks).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
export FORESIGHT_REPO=$REPO
export FORESIGHT_CACHE=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
C=$FORESIGHT_CACHE
editors=("$@")
[ ${#editors[@]} -gt 0 ] || editors=(nvim-0.12 nvim-0.11 vscode emacs helix)

WORK=$(mktemp -d /tmp/foresight-editors.XXXXXX)
export WORK
LOGS=${FORESIGHT_E2E_LOGS:-$WORK/logs}
mkdir -p "$LOGS"
# The scratch folder goes at the end unless KEEP_WORK is set or an editor failed (its logs stay).
cleanup() { [ -n "${KEEP_WORK:-}" ] || [ "${failed:-1}" -ne 0 ] || rm -rf "$WORK"; }
trap cleanup EXIT

if [ -z "${FORESIGHT_BIN:-}" ]; then
  echo "== building foresight (release)"
  cargo build --release --quiet || { echo "FAIL build"; echo "0 passed, 1 failed"; exit 1; }
  FORESIGHT_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/foresight"
fi
export FORESIGHT_BIN
# Short suggestions: the tiny random model's text is gibberish, and short gibberish is more often
# printable (pick_sample.py looks for a buffer whose suggestion is plain text).
export FORESIGHT_CONFIG=${FORESIGHT_CONFIG:-'{"maxTokens": 4}'}
if [ -z "${FORESIGHT_MODEL:-}" ]; then
  FORESIGHT_MODEL=$WORK/model
  "$FORESIGHT_BIN" tiny-model "$FORESIGHT_MODEL" || { echo "FAIL tiny-model"; echo "0 passed, 1 failed"; exit 1; }
fi
export FORESIGHT_MODEL
export FORESIGHT_SAMPLE=$WORK/sample.py
echo "== choosing a buffer with a printable suggestion"
python3 tests/editors/lib/pick_sample.py "$FORESIGHT_BIN" "$FORESIGHT_MODEL" "$FORESIGHT_CONFIG" "$FORESIGHT_SAMPLE" \
  || { echo "FAIL pick_sample"; echo "0 passed, 1 failed"; exit 1; }

install() {  # install NAME SCRIPT: runs an installer once per run, logging to $LOGS
  local name=$1 script=$2
  [ -e "$WORK/.installed-$name" ] && return 0
  echo "== installing $name ($script)"
  if "$REPO/scripts/$script" > "$LOGS/install-$name.log" 2>&1; then
    tail -1 "$LOGS/install-$name.log"; touch "$WORK/.installed-$name"
  else
    tail -20 "$LOGS/install-$name.log"; return 1
  fi
}

run_one() {
  local ed=$1
  case $ed in
    nvim-0.12)
      install nvim install_nvim.sh || return 1
      (cd "$WORK" && timeout 300 "$C/bin/nvim-0.12" --headless -u NONE -i NONE -S "$REPO/tests/editors/nvim/ghost_0_12.lua") ;;
    nvim-0.11)
      install nvim install_nvim.sh || return 1
      (cd "$WORK" && timeout 300 "$C/bin/nvim-0.11" --headless -u NONE -i NONE -S "$REPO/tests/editors/nvim/menu_0_11.lua") ;;
    emacs)
      install emacs install_emacs.sh || return 1
      (cd "$WORK" && timeout 300 emacs -Q --batch -l "$REPO/tests/editors/emacs/e2e.el") ;;
    helix)
      install helix install_helix.sh || return 1
      HX="$C/bin/hx" timeout 300 python3 "$REPO/tests/editors/helix/e2e.py" ;;
    vscode)
      install vscode install_vscode.sh || return 1
      timeout 600 bash "$REPO/tests/editors/vscode/run.sh" ;;
    *) echo "unknown editor $ed (known: nvim-0.12 nvim-0.11 vscode emacs helix)"; return 1 ;;
  esac
}

passed=0; failed=0; failed_names=()
for ed in "${editors[@]}"; do
  echo "== $ed"
  start=$(date +%s)
  cp "$WORK/sample.py" "$WORK/sample.orig.py" 2>/dev/null
  if run_one "$ed" 2>&1 | tee "$LOGS/$ed.log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
    passed=$((passed + 1)); echo "== $ed: ok ($(( $(date +%s) - start )) s)"
  else
    failed=$((failed + 1)); failed_names+=("$ed"); echo "== $ed: FAILED ($(( $(date +%s) - start )) s; log $LOGS/$ed.log)"
  fi
  cp "$WORK/sample.orig.py" "$WORK/sample.py" 2>/dev/null   # each editor starts from the same buffer
done
[ $failed -eq 0 ] || echo "failed editors: ${failed_names[*]}"
echo "editors: $passed passed, $failed failed"
[ $failed -eq 0 ]
