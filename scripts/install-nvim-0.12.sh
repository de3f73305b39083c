#!/usr/bin/env bash
# Installs Neovim 0.12 (Debian sid's package, run with sid's own loader and libc) for the headless
# e2e test, without touching /etc/apt: a private apt source list and state under $DIR. Idempotent:
# does nothing when $DIR/nvim already runs and reports 0.12 or newer. Prints the wrapper's path last.
# Called by .ci/run (through the test script) before the tests.
set -euo pipefail
DIR=${FORESIGHT_NVIM_DIR:-$HOME/.cache/foresight/nvim-sid}
WRAPPER=$DIR/nvim
if [ -x "$WRAPPER" ] && "$WRAPPER" --version 2>/dev/null | head -1 | grep -Eq 'NVIM v0\.(1[2-9]|[2-9][0-9])'; then
  echo "$WRAPPER"
  exit 0
fi
mkdir -p "$DIR/lists/partial" "$DIR/cache/archives/partial" "$DIR/debs"
cat > "$DIR/sid.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$DIR" -o "Dir::State::Lists=$DIR/lists" -o "Dir::Cache=$DIR/cache")
apt-get "${O[@]}" -qq update >&2
# The runtime closure of sid's neovim, by name; names move in sid, so ask apt for what neovim needs.
PKGS="neovim neovim-runtime libc6 libgcc-s1 libluajit-5.1-2 libunibilium4 libutf8proc3 lua-lpeg lua-luv"
for dep in $(apt-cache "${O[@]}" depends neovim 2>/dev/null | awk '/Depends:/ {print $2}' | tr -d '<>' | sort -u); do
  case "$dep" in libtree-sitter*|libuv1*|libvterm*|libmsgpack*|libtermkey*) PKGS="$PKGS $dep" ;; esac
done
(cd "$DIR/debs" && apt-get "${O[@]}" -qq download $PKGS >&2)
rm -rf "$DIR/root"
for f in "$DIR"/debs/*.deb; do dpkg -x "$f" "$DIR/root"; done
L=$DIR/root/usr/lib/x86_64-linux-gnu
cat > "$WRAPPER" <<WRAP
#!/bin/sh
# Neovim from Debian sid with its own loader and libc (the server it starts uses the system's).
export VIMRUNTIME=$DIR/root/usr/share/nvim/runtime
exec $L/ld-linux-x86-64.so.2 --library-path $L $DIR/root/usr/bin/nvim "\$@"
WRAP
chmod +x "$WRAPPER"
"$WRAPPER" --version | head -1 >&2
echo "$WRAPPER"
