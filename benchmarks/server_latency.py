"""BoN(N) over HTTP vs the floor (raw vLLM, n = N) vs a naive transformers loop.

    python benchmarks/server_latency.py --budgets 1 4 8 16 --max-tokens 64 --reps 3

For each N, with the same prompt and token budget (``ignore_eos`` is not used, so lengths vary
with sampling; tokens/s normalises for that):
* raw:   vLLM AsyncLLM generating n = N in one request, no scoring (the floor);
* server: POST /v1/align on ``iama serve`` (HTTP + validation + generation + scoring + selection);
* naive: transformers ``generate(num_return_sequences=N)`` then scoring with the same rewards.
Plus server throughput: C concurrent clients × R requests at N = 8.
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
    from iama.models import vllm_engine_kwargs

    llm = AsyncLLM.from_engine_args(
        AsyncEngineArgs(model=model, enforce_eager=True, max_model_len=2048, **vllm_engine_kwargs())
    )
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
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
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


def server(model: str, budgets: list[int], max_tokens: int, reps: int, clients: int, per_client: int) -> dict:
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import start_server

    log_dir = Path("runs/bench-server")
    log_dir.mkdir(parents=True, exist_ok=True)
    srv = start_server(model, log_dir, env={"IAMA_MAX_CONCURRENT_REQUESTS": str(clients), "IAMA_MAX_TOKENS": "1024"})
    res: dict = {"latency": {}, "throughput": {}}
    try:
        for n in budgets:
            lat, toks, gen, score = [], [], [], []
            for r in range(reps + 1):
                body = {"prompt": PROMPT, "reward_weights": WEIGHTS, "budget": n, "max_tokens": max_tokens, "seed": r}
                t0 = time.perf_counter()
                d = httpx.post(f"{srv.url}/v1/align", json=body, timeout=600).json()
                if r:
                    lat.append(time.perf_counter() - t0)
                    toks.append(d["usage"]["completion_tokens"])
                    gen.append(d["timings"]["generation_s"])
                    score.append(d["timings"]["scoring_s"])
            res["latency"][n] = {
                "latency_s": statistics.median(lat),
                "tokens_per_s": sum(toks) / sum(lat),
                "generation_s": statistics.median(gen),
                "scoring_s": statistics.median(score),
            }

        async def load() -> dict[str, float]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=600) as c:

                async def worker(i: int) -> list[int]:
                    toks = []
                    for j in range(per_client):
                        body = {
                            "prompt": PROMPT,
                            "reward_weights": WEIGHTS,
                            "budget": 8,
                            "max_tokens": max_tokens,
                            "seed": 100 * i + j,
                        }
                        r = await c.post("/v1/align", json=body)
                        toks.append(r.json()["usage"]["completion_tokens"])
                    return toks

                t0 = time.perf_counter()
                all_toks = await asyncio.gather(*(worker(i) for i in range(clients)))
                wall = time.perf_counter() - t0
            n_req = clients * per_client
            return {
                "clients": clients,
                "requests": n_req,
                "wall_s": wall,
                "requests_per_s": n_req / wall,
                "tokens_per_s": sum(map(sum, all_toks)) / wall,
            }

        res["throughput"] = asyncio.run(load())
    finally:
        srv.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-server/results.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from iama.models import resolve_model

    model = resolve_model(args.model)
    results = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "raw_vllm": raw_vllm(model, args.budgets, args.max_tokens, args.reps),
        "naive_transformers": naive(model, args.budgets, args.max_tokens, args.reps),
        "server": server(args.model, args.budgets, args.max_tokens, args.reps, args.clients, args.per_client),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"{'N':>3} {'raw vLLM s':>11} {'server s':>9} {'(gen/score)':>13} {'naive HF s':>11}")
    for n in args.budgets:
        s = results["server"]["latency"][n]
        print(
            f"{n:>3} {results['raw_vllm'][n]['latency_s']:>11.2f} {s['latency_s']:>9.2f} "
            f"{s['generation_s']:>6.2f}/{s['scoring_s']:<6.3f} {results['naive_transformers'][n]['latency_s']:>11.2f}"
        )
    print("throughput:", json.dumps(results["server"]["throughput"]))


if __name__ == "__main__":
    main()
