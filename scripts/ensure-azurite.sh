#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, from the npm registry) for the
# Azure Blob test, into $WEIR_AZURITE_DIR (default ~/.cache/weir/azurite). Idempotent;
# run by `make test`. Needs Node.js and npm (on the project machines).
set -euo pipefail
exec "$(dirname "$0")/ensure-npm-tool.sh" azurite 3.35.0 \
    "${WEIR_AZURITE_DIR:-$HOME/.cache/weir/azurite}" node_modules/.bin/azurite-blob
