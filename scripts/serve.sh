#!/usr/bin/env bash
# Install (or reuse) the environment and serve the embedded default model on vLLM.
# Extra arguments go to `iama serve` (e.g. --port 9000, --model PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh run
exec .venv/bin/iama serve "$@"
