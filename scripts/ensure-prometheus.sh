#!/usr/bin/env bash
# Debian's Prometheus (the server, and promtool to lint metrics and test alert rules),
# unpacked into ~/.cache/weir/tools/prometheus rather than installed: installing the package
# starts a system daemon on :9090, and the tests start their own on free ports. Idempotent;
# run by `make test`. Prints nothing when it is already there.
set -euo pipefail
dest="${HOME}/.cache/weir/tools/prometheus"
if [ -x "${dest}/usr/bin/promtool" ] && [ -x "${dest}/usr/bin/prometheus" ]; then exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
cd "${work}"
if ! apt-get download prometheus >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    apt-get download prometheus >/dev/null
fi
mkdir -p "${dest}"
dpkg-deb -x prometheus_*.deb "${dest}"
"${dest}/usr/bin/promtool" --version >/dev/null
echo "prometheus unpacked into ${dest}"
