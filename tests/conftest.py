"""Shared fixtures: tiny local models, built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Never reach for a model hub from the tests; everything is built or shipped locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The default-model cache lives in the repo (git-ignored) so repeated runs convert once.
os.environ.setdefault("IAMA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "iama"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_classifier

    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-clf"))


API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def tiny_server(tiny_llama, tiny_classifier, tmp_path_factory):
    """The real server on vLLM with the tiny model; one engine for the whole session."""
    from servers import start_server

    d = tmp_path_factory.mktemp("server")
    cfg = d / "server.yaml"
    cfg.write_text(
        "dtype: float32\n"  # as on CI (no native bf16), whatever this machine has
        "max_budget: 16\n"
        "max_tokens: 256\n"
        "max_prompt_tokens: 200\n"
        "max_concurrent_requests: 2\n"
        "max_queued_requests: 6\n"
        "rewards:\n"
        f"  clf: {{type: 'hf:{tiny_classifier}', label: POSITIVE, pair: false}}\n"
        "  short: {type: length, target: 5, max_length: 50}\n"
    )
    srv = start_server(str(tiny_llama), d, env={"IAMA_API_KEYS": f"other-key,{API_KEY}", "IAMA_CONFIG_FILE": str(cfg)})
    yield srv
    srv.stop()
