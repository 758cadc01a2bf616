#!/usr/bin/env bash
# Installs the Python test peer (grpcio + grpcio-tools from PyPI) into a venv that the
# tests find at $WEIR_PYTHON (default ~/.cache/weir/venv). Idempotent; run by `make test`.
# With arguments REQUIREMENTS VENV it installs that list into that venv instead.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
req="${1:-$here/tests/python/requirements.txt}"
venv="${2:-${WEIR_VENV:-$HOME/.cache/weir/venv}}"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
