#!/usr/bin/env bash
# Installs what the data benchmark compares Weir against (pyarrow and DuckDB from PyPI,
# bench/requirements.txt) into $WEIR_BENCH_VENV (default ~/.cache/weir/bench-venv).
# Idempotent; run by `make bench`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
exec "$here/scripts/ensure-python-peer.sh" "$here/bench/requirements.txt" "${WEIR_BENCH_VENV:-$HOME/.cache/weir/bench-venv}"
