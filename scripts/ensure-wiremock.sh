#!/usr/bin/env bash
# Installs WireMock's standalone server (from the npm registry: the `wiremock` package
# carries the standalone jar, run on the machine's Java 17) for the API tests, into
# $WEIR_WIREMOCK_DIR (default ~/.cache/weir/wiremock). Idempotent; run by `make test`.
set -euo pipefail
version=3.13.2
command -v java >/dev/null || { echo "java (17 or later) is needed to run WireMock for the tests" >&2; exit 1; }
exec "$(dirname "$0")/ensure-npm-tool.sh" wiremock "$version" \
    "${WEIR_WIREMOCK_DIR:-$HOME/.cache/weir/wiremock}" "node_modules/wiremock/build/wiremock-standalone-$version.jar"
