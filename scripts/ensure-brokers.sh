#!/usr/bin/env bash
# Makes sure the stream brokers the tests consume from answer on loopback — RabbitMQ on
# 127.0.0.1:5672 (guest/guest) and NATS with JetStream on 127.0.0.1:4222 — installing them
# from Debian's packages and starting them when they do not. Idempotent; run by `make test`.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! up 5672; then
  command -v rabbitmq-server >/dev/null || { echo "installing rabbitmq-server from Debian's packages" >&2; install rabbitmq-server; }
  $SUDO service rabbitmq-server start >/dev/null 2>&1 || (rabbitmq-server -detached >/dev/null 2>&1 || true)
fi
if ! up 4222; then
  command -v nats-server >/dev/null || { echo "installing nats-server from Debian's packages" >&2; install nats-server; }
  mkdir -p "$HOME/.cache/weir/nats"
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$HOME/.cache/weir/nats" >"$HOME/.cache/weir/nats/log" 2>&1 &
fi
for _ in $(seq 1 60); do
  if up 5672 && up 4222; then exit 0; fi
  sleep 1
done
up 5672 || echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2
up 4222 || echo "NATS did not come up on 127.0.0.1:4222" >&2
exit 1
