#!/usr/bin/env bash
# Checks for the Google Cloud SDK's Pub/Sub emulator the stream tests start (a Java
# program; WEIR_PUBSUB_EMULATOR overrides where it is), installing it with gcloud where
# the SDK is present without it. Idempotent; run by `make test`.
set -euo pipefail
emulator="${WEIR_PUBSUB_EMULATOR:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}"
command -v java >/dev/null || { echo "java (17 or later) is needed to run the Pub/Sub emulator for the tests" >&2; exit 1; }
[ -x "$emulator" ] && exit 0
if command -v gcloud >/dev/null; then
    echo "installing the Pub/Sub emulator (gcloud components install pubsub-emulator)…"
    gcloud components install pubsub-emulator --quiet >/dev/null 2>&1 \
        || gcloud components install beta pubsub-emulator --quiet
fi
[ -x "$emulator" ] || { echo "the Pub/Sub emulator is not at $emulator (install the Google Cloud SDK's pubsub-emulator component, or set WEIR_PUBSUB_EMULATOR)" >&2; exit 1; }
