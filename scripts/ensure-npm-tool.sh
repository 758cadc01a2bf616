#!/usr/bin/env bash
# Installs an npm package the tests run (an emulator, a server) into its own folder,
# unless that version is there: ensure-npm-tool.sh <package> <version> <dir> <file it brings>.
# The ensure-<tool>.sh scripts call it; Node.js and npm are on the project machines.
set -euo pipefail
package="$1" version="$2" dir="$3" brings="$4"
if [ -e "$dir/$brings" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to install $package for the tests" >&2; exit 1; }
mkdir -p "$dir"
npm install --prefix "$dir" --silent --no-audit --no-fund "$package@$version" >/dev/null
[ -e "$dir/$brings" ] || { echo "$package@$version did not bring $dir/$brings" >&2; exit 1; }
echo "$version" > "$dir/.version"
