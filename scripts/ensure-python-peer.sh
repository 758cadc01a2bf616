#!/usr/bin/env bash
# Installs the Python test peer (grpcio + grpcio-tools from PyPI) into a venv that the
# tests find at $WEIR_PYTHON (default ~/.cache/weir/venv). Idempotent; run by `make test`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WEIR_VENV:-$HOME/.cache/weir/venv}"
req="$here/tests/python/requirements.txt"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
