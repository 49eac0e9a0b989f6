"""BoN(N) over HTTP vs the floor (raw vLLM, n = N) vs a naive transformers loop.

    python benchmarks/server_latency.py --budgets 1 4 8 16 --max-tokens 64 --reps 3

For each N, with the same prompt and token budget (``ignore_eos`` is not used, so lengths vary
with sampling; tokens/s normalises for that):
* raw:   vLLM AsyncLLM generating n = N in one request, no scoring (the floor);
* naive: transformers ``generate(num_return_sequences=N)`` then scoring with the same rewards;
* servers, in phases A, B, A (one engine at a time):
  A: POST /v1/align on ``iama serve`` (HTTP + validation + generation + scoring + selection);
  B: what a user would pick instead: vLLM's own OpenAI server (``python -m
     vllm.entrypoints.openai.api_server``) with n = N, scoring the same rewards client-side;
  latency (one request at a time) and throughput (C concurrent clients × R requests) at each N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROMPT = "Describe your ideal weekend in a few sentences."
WEIGHTS = {"sentiment": 1.0, "readability": 0.5, "no_profanity": 0.5}


def raw_vllm(model: str, budgets: list[int], max_tokens: int, reps: int) -> dict[int, dict[str, float]]:
    from transformers import AutoTokenizer
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    tok = AutoTokenizer.from_pretrained(model)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    from iama.vllm_settings import vllm_engine_kwargs

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, max_model_len=2048, **vllm_engine_kwargs()))
    out: dict[int, dict[str, float]] = {}

    async def go() -> None:
        k = 0
        for n in budgets:
            lat, toks = [], []
            for r in range(reps + 1):
                sp = SamplingParams(
                    n=n, max_tokens=max_tokens, temperature=1.0, seed=r, output_kind=RequestOutputKind.FINAL_ONLY
                )
                t0 = time.perf_counter()
                async for o in llm.generate(TokensPrompt(prompt_token_ids=ids), sp, f"b{k}"):
                    final = o
                k += 1
                if r:  # first is warm-up
                    lat.append(time.perf_counter() - t0)
                    toks.append(sum(len(c.token_ids) for c in final.outputs))
            out[n] = {"latency_s": statistics.median(lat), "tokens_per_s": sum(toks) / sum(lat)}

    asyncio.run(go())
    llm.shutdown()
    return out


def naive(model: str, budgets: list[int], max_tokens: int, reps: int) -> dict[int, dict[str, float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iama.rewards import DEFAULT_REWARDS, RewardSet

    rs = RewardSet({k: DEFAULT_REWARDS[k] for k in WEIGHTS})
    tok = AutoTokenizer.from_pretrained(model)
    from iama.dtypes import choose_dtype, torch_dtype

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype(choose_dtype())).eval()
    enc = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = {}
    for n in budgets:
        lat, toks = [], []
        for r in range(reps + 1):
            torch.manual_seed(r)
            t0 = time.perf_counter()
            with torch.no_grad():
                g = m.generate(
                    **enc,
                    do_sample=True,
                    temperature=1.0,
                    max_new_tokens=max_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.eos_token_id,
                )
            new = g[:, enc["input_ids"].shape[1] :]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            rs.combine(rs.score([PROMPT] * n, texts), WEIGHTS)
            if r:
                lat.append(time.perf_counter() - t0)
                toks.append(int((new != tok.eos_token_id).sum()))
        out[n] = {"latency_s": statistics.median(lat), "tokens_per_s": sum(toks) / sum(lat)}
    return out


def start_iama(model: str, clients: int):  # -> ServerProc
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import start_bench_server

    env = {"IAMA_MAX_CONCURRENT_REQUESTS": str(clients), "IAMA_MAX_TOKENS": "1024", "IAMA_REQUEST_TIMEOUT_S": "3600"}
    return start_bench_server(model, "bench-server", env)


def start_vllm_server(model_path: str):  # -> ServerProc
    """vLLM's own OpenAI server on the same model, dtype and engine settings as ``iama serve``."""

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import free_port, spawn_until_healthy

    from iama.vllm_settings import vllm_engine_kwargs

    kw = vllm_engine_kwargs(2)
    port = free_port()
    log = Path("runs/bench-server") / f"vllm-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        "m",
        "--port",
        str(port),
        "--dtype",
        kw["dtype"],
        "--max-model-len",
        "2048",
        "--seed",
        "0",
    ]
    if kw["enforce_eager"]:
        cmd.append("--enforce-eager")
    if kw.get("enable_chunked_prefill") is False:
        cmd.append("--no-enable-chunked-prefill")
    return spawn_until_healthy(cmd, port, log, {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}, 1800)


async def iama_request(client, n: int, seed: int, max_tokens: int) -> int:
    """One aligned request to ``iama serve``; returns the completion tokens generated."""
    body = {"prompt": PROMPT, "reward_weights": WEIGHTS, "budget": n, "max_tokens": max_tokens, "seed": seed}
    r = await client.post("/v1/align", json=body)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def vllm_request_with(rewards):  # -> the request function for vLLM's server + client-side scoring
    async def request(client, n: int, seed: int, max_tokens: int) -> int:
        """What a user does without iama: n = N from vLLM's OpenAI server, score, take the best."""
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": PROMPT}],
            "n": n,
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": seed,
        }
        r = await client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        d = r.json()
        texts = [c["message"]["content"] for c in d["choices"]]
        combined = await asyncio.to_thread(lambda: rewards.combine(rewards.score([PROMPT] * n, texts), WEIGHTS))
        _ = texts[int(combined.argmax())]
        return d["usage"]["completion_tokens"]

    return request


def measure(url: str, request, budgets: list[int], max_tokens: int, reps: int, clients: int, per_client: int) -> dict:
    """Latency (one request at a time, median of ``reps`` after a warm-up) and concurrent
    throughput (``clients`` × ``per_client`` requests) at each N, through ``request``."""
    import httpx

    async def go() -> dict:
        res: dict = {"latency": {}, "throughput": {}}
        async with httpx.AsyncClient(base_url=url, timeout=3600) as c:
            for n in budgets:
                lat, toks = [], []
                for r in range(reps + 1):
                    t0 = time.perf_counter()
                    tok = await request(c, n, r, max_tokens)
                    if r:
                        lat.append(time.perf_counter() - t0)
                        toks.append(tok)
                res["latency"][n] = {"latency_s": statistics.median(lat), "tokens_per_s": sum(toks) / sum(lat)}

                async def worker(i: int, n: int = n) -> int:
                    return sum([await request(c, n, 1000 + 100 * i + j, max_tokens) for j in range(per_client)])

                t0 = time.perf_counter()
                done = await asyncio.gather(*(worker(i) for i in range(clients)))
                wall = time.perf_counter() - t0
                res["throughput"][n] = {
                    "clients": clients,
                    "requests": clients * per_client,
                    "wall_s": wall,
                    "requests_per_s": clients * per_client / wall,
                    "tokens_per_s": sum(done) / wall,
                }
        return res

    return asyncio.run(go())


def compare_servers(model: str, args: argparse.Namespace) -> dict:
    """Phases A (iama serve), B (vLLM's server + client scoring), A again: one engine at a time
    (two starve each other on a small CPU), and A twice shows the drift between phases."""
    from iama.models import resolve_model
    from iama.rewards import DEFAULT_REWARDS, RewardSet

    rewards = RewardSet({k: DEFAULT_REWARDS[k] for k in WEIGHTS})
    rewards.warm_up()
    phases: list[dict] = []
    for phase in args.phases:
        if phase == "A":
            srv = start_iama(model, args.clients)
            request = iama_request
        else:
            srv = start_vllm_server(resolve_model(model))
            request = vllm_request_with(rewards)
        try:
            res = measure(srv.url, request, args.budgets, args.max_tokens, args.reps, args.clients, args.per_client)
        finally:
            srv.stop()
        phases.append({"phase": phase, "arm": "iama" if phase == "A" else "vllm+client_scoring", **res})
        print(phase, json.dumps(res), flush=True)
    return {"phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--arms", nargs="+", default=["raw", "naive", "servers"], choices=["raw", "naive", "servers"])
    ap.add_argument("--phases", nargs="+", default=["A", "B", "A"], choices=["A", "B"])
    ap.add_argument("--out", default="runs/bench-server/results.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from iama.models import resolve_model

    model = resolve_model(args.model)
    results: dict = {"model": args.model, "max_tokens": args.max_tokens, "reps": args.reps, "weights": WEIGHTS}
    if "raw" in args.arms:
        results["raw_vllm"] = raw_vllm(model, args.budgets, args.max_tokens, args.reps)
    if "naive" in args.arms:
        results["naive_transformers"] = naive(model, args.budgets, args.max_tokens, args.reps)
    if "servers" in args.arms:
        results["servers"] = compare_servers(args.model, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
