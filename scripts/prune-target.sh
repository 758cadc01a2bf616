#!/usr/bin/env bash
# Keeps the reused target directory from filling the disk: cargo names each test binary
# `<name>-<hash>` and a change of dependencies changes the hash, leaving the old binary
# (hundreds of MB each, with debug info) behind. This keeps the newest executable of each
# name under target/*/deps and deletes the older ones. Run by `make test` before building.
set -euo pipefail
target="${CARGO_TARGET_DIR:-${HOME}/.cache/weir/target}"
for deps in "${target}"/*/deps; do
    [ -d "${deps}" ] || continue
    # Executables only (no extension: not .rlib/.rmeta/.d/.so), newest first.
    find "${deps}" -maxdepth 1 -type f -perm -u+x -regextype posix-extended -regex '.*/[A-Za-z0-9_]+-[0-9a-f]{16}' -printf '%T@ %p\n' \
        | sort -rn \
        | awk '{ name = $2; sub(/.*\//, "", name); sub(/-[0-9a-f]{16}$/, "", name); if (seen[name]++) print $2 }' \
        | xargs -r rm -f
done
