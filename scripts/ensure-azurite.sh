#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, from the npm registry) for the
# Azure Blob test, into $WEIR_AZURITE_DIR (default ~/.cache/weir/azurite). Idempotent;
# run by `make test`. Needs Node.js and npm (on the project machines).
set -euo pipefail
version=3.35.0
dir="${WEIR_AZURITE_DIR:-$HOME/.cache/weir/azurite}"
if [ -x "$dir/node_modules/.bin/azurite-blob" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to install Azurite for the tests" >&2; exit 1; }
mkdir -p "$dir"
npm install --prefix "$dir" --silent --no-audit --no-fund "azurite@$version" >/dev/null
echo "$version" > "$dir/.version"
