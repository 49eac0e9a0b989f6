"""vLLM decode speed of the default model in bf16 vs fp32 on this machine (issue 11's dtype rule).

    python benchmarks/dtype_speed.py --out benchmarks/results/dtype/dtype_speed.json

Each dtype runs in its own process, one after the other (two engines on a small CPU starve each
other). Workloads, ``ignore_eos`` so every run generates exactly the same number of tokens:

* ``bon``: 2 prompts × n = 8 × 48 tokens, the server's best-of-8 shape;
* ``single``: 1 prompt × n = 1 × 48 tokens, one plain stream.

Median of ``--reps`` timed runs after one warm-up; tokens/s = generated tokens / wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["Describe your ideal weekend in a few sentences.", "Explain how a bicycle works."]
WORKLOADS = {"bon": (2, 8), "single": (1, 1)}  # prompts, n


def one(dtype: str, max_tokens: int, reps: int) -> dict:
    from vllm import LLM, SamplingParams

    from iama.models import resolve_model
    from iama.vllm_settings import vllm_engine_kwargs

    model = resolve_model("default")
    llm = LLM(model=model, max_model_len=2048, seed=0, **vllm_engine_kwargs(dtype=dtype))  # type: ignore[arg-type]
    tok = llm.get_tokenizer()
    rendered = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    out: dict[str, dict[str, float]] = {}
    for name, (n_prompts, n) in WORKLOADS.items():
        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=1.0, ignore_eos=True, seed=1)
        times = []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            res = llm.generate(rendered[:n_prompts], params, use_tqdm=False)
            if r:
                times.append(time.perf_counter() - t0)
        tokens = sum(len(o.token_ids) for req in res for o in req.outputs)
        wall = statistics.median(times)
        out[name] = {"tokens": tokens, "median_s": wall, "tokens_per_s": tokens / wall, "runs_s": times}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/dtype/dtype_speed.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(one(args.child, args.max_tokens, args.reps)), flush=True)
        return
    from iama.dtypes import NATIVE_BF16_CPU_FLAGS, choose_dtype, cpu_flags

    flags = cpu_flags()
    results: dict = {
        "machine": {
            "cpu": next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")
                ),
                platform.processor(),
            ),
            "cores": len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("processor")]),
            "avx512f": "avx512f" in flags,
            "native_bf16_flags": sorted(NATIVE_BF16_CPU_FLAGS & flags),
            "auto_dtype": choose_dtype(cuda=False).reason,
        },
        "max_tokens": args.max_tokens,
        "reps": args.reps,
        "dtypes": {},
    }
    for dtype in args.dtypes:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            dtype,
            "--max-tokens",
            str(args.max_tokens),
            "--reps",
            str(args.reps),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        results["dtypes"][dtype] = json.loads(line.removeprefix("RESULT "))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["machine"]))
    for dtype, r in results["dtypes"].items():
        print(
            f"{dtype:>9}: bon {r['bon']['tokens_per_s']:6.1f} tok/s   single {r['single']['tokens_per_s']:6.1f} tok/s"
        )


if __name__ == "__main__":
    main()
