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
