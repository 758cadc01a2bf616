#!/usr/bin/env bash
# What building and testing Weir needs from the system: a C toolchain and OpenSSL headers
# for the bundled librdkafka; for the tests, kcat (reads events the way operators do) and
# OpenSSH (the SFTP tests run Debian's sshd on a loopback port; OpenDAL's SFTP uses ssh).
# Installs from Debian's packages what is missing (needs root, as on the project machines).
set -euo pipefail
missing=()
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ "${1:-}" = "--with-test-tools" ]; then
    command -v kcat >/dev/null || missing+=(kcat)
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh >/dev/null || missing+=(openssh-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's packages…"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
