#!/usr/bin/env bash
# Installs Helix from Debian trixie, idempotently, into $HOME/.cache/foresight/deb-trixie/root, with
# the wrapper bin/hx that runs it with trixie's own loader and libc (Debian 12 has no Helix).
# Also installs tmux (apt), which the Helix test drives it through.
set -euo pipefail
C=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$C/bin"
if ! command -v tmux >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
fi
"$here/deb_root.sh" trixie "$C/deb-trixie" hx
R="$C/deb-trixie/root"
cat > "$C/bin/hx" <<W
#!/bin/sh
L="$R/usr/lib/x86_64-linux-gnu"
HELIX_RUNTIME="\${HELIX_RUNTIME:-$R/usr/lib/hx/runtime}" exec "\$L/ld-linux-x86-64.so.2" --library-path "\$L" "$R/usr/lib/hx/hx" "\$@"
W
chmod +x "$C/bin/hx"
"$C/bin/hx" --version
