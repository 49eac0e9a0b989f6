"""Shared fixtures: tiny local models, built once per test session."""

from __future__ import annotations

import functools
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
# Importing TRL sets VLLM_LOGGING_LEVEL=ERROR where it is unset (trl/_compat.py), so once any test
# imported TRL, every process started later (our servers, vLLM's) logged none of vLLM's lines.
# vLLM's own default, fixed for the session: what a process logs does not depend on test order.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")


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


@functools.cache
def _shares_tiny_server(path: Path) -> bool:
    """Whether a test module uses the session's ``tiny_server`` (read from its source: the
    controller schedules before any worker has collected, so fixtures are not known yet)."""
    return path.is_file() and "tiny_server" in path.read_text()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``scripts/test.sh`` runs two workers) a module is one unit, so that
    its module-scoped engine or training starts once and its tests keep their order; and every
    module that uses the session's ``tiny_server`` joins one unit, so that one engine serves
    them all. (xdist's own ``loadgroup`` marks do not reach pytest 9's node ids.)"""
    from xdist.scheduler import LoadFileScheduling

    root = Path(config.rootpath)

    class ModuleScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            test_file = nodeid.split("::", 1)[0]
            return "tiny_server" if _shares_tiny_server(root / test_file) else test_file

    return ModuleScheduling(config, log)
