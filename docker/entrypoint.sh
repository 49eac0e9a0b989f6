#!/usr/bin/env bash
# Container entry point: prepare the embedded default model into the cache volume once
# (no-op when serving a mounted or hub model), then exec the command so signals reach it.
set -euo pipefail
if [ "${1:-}" = "iama" ] && [ "${2:-}" = "serve" ] && [ "${IAMA_MODEL:-default}" = "default" ]; then
  iama prepare-model >/dev/null
fi
exec "$@"
