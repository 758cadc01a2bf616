#!/usr/bin/env bash
# Installs cargo-fuzz (from crates.io) into ~/.cache/weir/tools unless it is there, and
# prints the toolchain flag `make fuzz` builds with: `+nightly` where a nightly toolchain
# is installed, otherwise the stable one with RUSTC_BOOTSTRAP=1 (the sanitizer flags are
# unstable options).
set -euo pipefail
root="${HOME}/.cache/weir/tools"
want="0.13.1"
if [ ! -x "${root}/bin/cargo-fuzz" ] || [ "$(cat "${root}/cargo-fuzz.version" 2>/dev/null)" != "${want}" ]; then
    echo "installing cargo-fuzz ${want} (once per machine)…" >&2
    CARGO_TARGET_DIR="${HOME}/.cache/weir/tools-target" \
        cargo install cargo-fuzz --version "=${want}" --locked --root "${root}" >&2
    echo "${want}" > "${root}/cargo-fuzz.version"
fi
