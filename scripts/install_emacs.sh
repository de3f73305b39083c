#!/usr/bin/env bash
# Installs Emacs 30 (which has eglot built in) from bookworm-backports through apt, idempotently.
# The backports source is given on the command line (a private source list under
# $HOME/.cache/foresight/apt-backports); /etc/apt is left alone.
set -euo pipefail
C=${FORESIGHT_CACHE:-$HOME/.cache/foresight}
if command -v emacs >/dev/null && emacs --version | head -1 | grep -Eq 'Emacs (29|[3-9][0-9])\.'; then
  emacs --version | head -1; exit 0
fi
D="$C/apt-backports"
mkdir -p "$D/sources"
cat > "$D/sources/backports.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
cp /etc/apt/sources.list.d/*.sources "$D/sources/" 2>/dev/null || true
O=(-o "Dir::Etc::SourceParts=$D/sources")
[ -s /etc/apt/sources.list ] || O+=(-o Dir::Etc::SourceList=/dev/null)
apt-get "${O[@]}" update -qq
DEBIAN_FRONTEND=noninteractive apt-get "${O[@]}" install -y -qq --no-install-recommends -t bookworm-backports emacs-nox >/dev/null
emacs --version | head -1
