#!/usr/bin/env bash
# Installs the Node.js engines the engine benchmark (`weir-bench limits`) compares Weir
# against, pinned, from the npm registry into $WEIR_BENCH_NODE (default
# ~/.cache/weir/bench-node): the Restate server (its binary comes in a platform package)
# with its TypeScript SDK, for bench/restate_chain.mjs, and graphile-worker, for
# bench/graphile_drain.mjs. Idempotent: skipped when the stamp file lists these versions.
set -euo pipefail
dir="${WEIR_BENCH_NODE:-$HOME/.cache/weir/bench-node}"
packages=(
    @restatedev/restate-server@1.7.12
    @restatedev/restate-sdk@1.17.2
    graphile-worker@0.18.0
)
stamp="$dir/.versions"
if [ -d "$dir/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${packages[*]}" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to install the Node.js benchmark peers" >&2; exit 1; }
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name": "weir-bench-node", "private": true}' > "$dir/package.json"
SCARF_ANALYTICS=false npm install --prefix "$dir" --silent --no-audit --no-fund --save-exact "${packages[@]}" >/dev/null
echo "${packages[*]}" > "$stamp"
