#!/usr/bin/env bash
# Installs WireMock's standalone server (from the npm registry: the `wiremock` package
# carries the standalone jar, run on the machine's Java 17) for the API tests, into
# $WEIR_WIREMOCK_DIR (default ~/.cache/weir/wiremock). Idempotent; run by `make test`.
set -euo pipefail
version=3.13.2
dir="${WEIR_WIREMOCK_DIR:-$HOME/.cache/weir/wiremock}"
jar="$dir/node_modules/wiremock/build/wiremock-standalone-$version.jar"
if [ -f "$jar" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to install WireMock for the tests" >&2; exit 1; }
command -v java >/dev/null || { echo "java (17 or later) is needed to run WireMock for the tests" >&2; exit 1; }
mkdir -p "$dir"
npm install --prefix "$dir" --silent --no-audit --no-fund "wiremock@$version" >/dev/null
[ -f "$jar" ] || { echo "wiremock@$version did not bring $jar" >&2; exit 1; }
echo "$version" > "$dir/.version"
