"""The served path of the number task: a trained model behind ``iama serve``, one request per
(held-out prompt, seed, user), best-of-4 with that user's reward weights.

What a user of the product sees: a request with ``reward_weights: {low: 1}`` and budget 4
should get a low number, one with ``{high: 1}`` a high number, from the *same* served model.
Each model is served in turn (one engine at a time on a 2-core CPU); every response is kept.

    python benchmarks/number/served.py --model iama=runs/sweep/number/runs/iama_w0.5-0.5_s0/model \\
        --model linear=runs/sweep/number/runs/linear_w0.5-0.5_s0/model --model base=default \\
        --out benchmarks/results/number/served.json

Request seeds are spaced by 1,000 (vLLM seeds candidate j of a request seeded s with s + j, so
requests seeded s and s + 1 would share three of their four candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
import numpy as np

SYSTEM = "Answer with a number only."
HELDOUT = Path(__file__).resolve().parents[2] / "trainer/iama_trainer/data/number-heldout.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH (repeatable; 'default' for the base)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from servers import start_bench_server

    from iama.rewards.number import first_number

    prompts = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines() if line.strip()]
    results: dict[str, list[dict[str, object]]] = {}
    for item in args.model:
        label, path = item.split("=", 1)
        srv = start_bench_server(path, f"served-number-{label}", {})
        rows = []
        try:
            with httpx.Client(base_url=srv.url, timeout=300) as client:
                for user in ("low", "high"):
                    for i, prompt in enumerate(prompts):
                        for s in range(args.seeds):
                            body = {
                                "messages": [
                                    {"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": prompt},
                                ],
                                "reward_weights": {user: 1.0},
                                "budget": args.budget,
                                "max_tokens": 8,
                                "temperature": 1.0,
                                "seed": 1000 * (i * args.seeds + s),
                                "return_candidates": True,
                            }
                            r = client.post("/v1/align", json=body)
                            r.raise_for_status()
                            data = r.json()
                            rows.append(
                                {
                                    "user": user,
                                    "prompt": i,
                                    "seed": body["seed"],
                                    "text": data["text"],
                                    "number": first_number(data["text"]),
                                    "scores": data["scores"],
                                    "candidates": [c["text"] for c in data.get("candidates", [])],
                                }
                            )
        finally:
            srv.stop()
        results[label] = rows
    summary = {}
    for label, rows in results.items():
        summary[label] = {}
        for user in ("low", "high"):
            mine = [r for r in rows if r["user"] == user]
            nums = np.array([np.nan if r["number"] is None else r["number"] for r in mine], dtype=float)
            raw = [r["scores"][user]["raw"] for r in mine]  # type: ignore[index]
            summary[label][user] = {
                "requests": len(mine),
                "median_number": float(np.nanmedian(nums)) if np.isfinite(nums).any() else None,
                "no_number": float(np.mean(~np.isfinite(nums))),
                "mean_reward": float(np.mean(raw)),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "budget": args.budget, "responses": results}, indent=1))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
