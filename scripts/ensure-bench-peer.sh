#!/usr/bin/env bash
# Installs what the benchmarks compare Weir against (pyarrow, DuckDB and dlt from PyPI,
# bench/requirements.txt) into $WEIR_BENCH_VENV (default ~/.cache/weir/bench-venv), and the
# HTTP server the API benchmark collects from (Debian's nginx-light; the benchmark runs it
# on a loopback port of its own, never as a service). Idempotent; run by `make bench`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "installing nginx-light from Debian's packages…"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nginx-light >/dev/null
fi
exec "$here/scripts/ensure-python-peer.sh" "$here/bench/requirements.txt" "${WEIR_BENCH_VENV:-$HOME/.cache/weir/bench-venv}"
