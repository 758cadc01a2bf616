#!/usr/bin/env bash
# Installs the Kafka-protocol broker the tests start (tansu, from crates.io) unless it is
# already built. It is cached under ~/.cache/weir/tools, so only a fresh machine pays for
# the build (about 15 minutes on 2 cores).
set -euo pipefail
root="${HOME}/.cache/weir/tools"
want="0.6.0"
if [ -x "${root}/bin/tansu" ] && [ "$(cat "${root}/tansu.version" 2>/dev/null)" = "${want}" ]; then
    exit 0
fi
echo "building the tansu broker ${want} for the tests (once per machine)…"
CARGO_TARGET_DIR="${HOME}/.cache/weir/tansu-target" \
    cargo install tansu --version "=${want}" --locked --features dynostore --root "${root}"
echo "${want}" > "${root}/tansu.version"
