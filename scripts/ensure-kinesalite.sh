#!/usr/bin/env bash
# Installs kinesalite (an Amazon Kinesis emulator on Node.js, from the npm registry; its
# LevelDB binding ships prebuilt) for the Kinesis stream tests, into $WEIR_KINESALITE_DIR
# (default ~/.cache/weir/kinesalite). Idempotent; run by `make test`.
set -euo pipefail
exec "$(dirname "$0")/ensure-npm-tool.sh" kinesalite 3.3.3 \
    "${WEIR_KINESALITE_DIR:-$HOME/.cache/weir/kinesalite}" node_modules/.bin/kinesalite
