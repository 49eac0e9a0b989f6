#!/usr/bin/env bash
# Install (or reuse) the dev environment and run the whole test suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
# Two workers: most of the suite waits on single-threaded imports and process starts (one core
# busy in two), so a second worker fills the other. Modules stay whole on one worker, and the
# tests that share the tiny vLLM server share one worker (tests/conftest.py). IAMA_TEST_WORKERS=0
# runs in this process.
exec .venv/bin/python -m pytest -n "${IAMA_TEST_WORKERS:-2}" --dist loadfile "$@"
