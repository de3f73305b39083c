#!/usr/bin/env bash
# Unpacks Debian packages of another suite (and everything they depend on) into a private root,
# without touching /etc/apt or the system's dpkg database. Used by the editor installers for tools
# that Debian 12 ships too old (Neovim 0.12 from sid, Helix from trixie).
#   deb_root.sh SUITE DEST PACKAGE...
# DEST/root holds the unpacked files; DEST/.done-<packages> marks a finished install (idempotent).
# Run binaries with their own loader and libc: see run_in_root below (sourced use) or the wrappers
# that the installers write.
set -euo pipefail
suite=$1; dest=$2; shift 2
stamp="$dest/.done-$(echo "$*" | tr ' ' '_')"
if [ -e "$stamp" ]; then echo "deb_root: $suite $* already in $dest"; exit 0; fi
mkdir -p "$dest/lists/partial" "$dest/cache/archives/partial" "$dest/sources" "$dest/root"
cat > "$dest/sources/$suite.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
: > "$dest/status"   # an empty dpkg status: resolve the whole dependency closure from the suite
O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dest/sources" -o "Dir::State::Lists=$dest/lists"
   -o "Dir::Cache=$dest/cache" -o "Dir::State::status=$dest/status" -o Dir::Etc::Preferences=/dev/null
   -o Dir::Etc::PreferencesParts=/dev/null -o APT::Install-Recommends=false -o Debug::NoLocking=1
   -o APT::Get::Assume-Yes=true -o APT::Sandbox::User=root)
apt-get "${O[@]}" update -qq
apt-get "${O[@]}" install --download-only -qq "$@" >/dev/null
for f in "$dest"/cache/archives/*.deb; do dpkg -x "$f" "$dest/root"; done
touch "$stamp"
echo "deb_root: unpacked $(ls "$dest"/cache/archives/*.deb | wc -l) packages of $suite into $dest/root"
