"""The served path of a two-user task: a trained model behind ``iama serve``, one request per
(held-out prompt, seed, user), best-of-4 with that user's reward weights.

What a user of the product sees: on the number task a request with ``reward_weights: {low: 1}``
and budget 4 should get a low number and one with ``{high: 1}`` a high number; on the tone task
``{warm: 1}`` a warm sentence and ``{plain: 1}`` a matter-of-fact one, from the *same* served
model. Each model is served in turn (one engine at a time on a 2-core CPU); every response is kept.

    python benchmarks/served_users.py --task number \\
        --model iama=runs/sweep/number/runs/iama_w0.5-0.5_s0/model \\
        --model linear=runs/sweep/number/runs/linear_w0.5-0.5_s0/model \\
        --out benchmarks/results/number/served.json

Each model is a trained one: its model card brings the users' rewards (``low``/``high``,
``warm``/``plain``), which the embedded default model's server does not have.

Request seeds are spaced by 1,000 (vLLM seeds candidate j of a request seeded s with s + j, so
requests seeded s and s + 1 would share three of their four candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class UserTask:
    """What a task's requests ask and what a response is measured by (the users' scalar)."""

    prompts: Path  # JSONL with a "prompt" field: held out from training
    system: str
    users: tuple[str, str]
    max_tokens: int
    scalar: str  # the key each response's measured value is stored under
    stop: tuple[str, ...] = ()  # the training's `sampling.stop`: sent as stop_token_ids, kept in the text


def _number(text: str) -> float | None:
    from iama.rewards.number import first_number

    return first_number(text)


def _compound(text: str) -> float | None:
    from iama.rewards.rules import vader_compound

    return float(vader_compound([text])[0])


TASKS: dict[str, tuple[UserTask, Callable[[str], float | None]]] = {
    "number": (
        UserTask(ROOT / "trainer/iama_trainer/data/number-heldout.jsonl", "Answer with a number only.",
                 ("low", "high"), 8, "number"),
        _number,
    ),
    "tone": (
        UserTask(ROOT / "benchmarks/heldout_prompts.jsonl", "Answer in one short sentence.", ("warm", "plain"), 48,
                 "compound", (".", "!", "?")),
        _compound,
    ),
}  # fmt: skip


def stop_request(task: UserTask, model: str) -> dict[str, Any]:
    """The request fields that stop as training did: the stop texts' token ids in this model's
    tokenizer (a stop string would also match inside longer tokens), kept in the answer."""
    if not task.stop:
        return {}
    from transformers import AutoTokenizer

    from iama.models import resolve_model
    from iama.sampling import SamplingSettings
    from iama_trainer.sampling import stop_token_ids

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    return {"stop_token_ids": stop_token_ids(tok, SamplingSettings(stop=task.stop)), "include_stop_str_in_output": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="number")
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH (repeatable; 'default' for the base)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from servers import start_bench_server

    task, measure = TASKS[args.task]
    prompts = [json.loads(line)["prompt"] for line in task.prompts.read_text().splitlines() if line.strip()]
    results: dict[str, list[dict[str, object]]] = {}
    for item in args.model:
        label, path = item.split("=", 1)
        srv = start_bench_server(path, f"served-{args.task}-{label}", {})
        stops = stop_request(task, path)
        rows = []
        try:
            with httpx.Client(base_url=srv.url, timeout=300) as client:
                for user in task.users:
                    for i, prompt in enumerate(prompts):
                        for s in range(args.seeds):
                            body = {
                                "messages": [
                                    {"role": "system", "content": task.system},
                                    {"role": "user", "content": prompt},
                                ],
                                "reward_weights": {user: 1.0},
                                "budget": args.budget,
                                "max_tokens": task.max_tokens,
                                "temperature": 1.0,
                                "seed": 1000 * (i * args.seeds + s),
                                "return_candidates": True,
                                **stops,
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
                                    task.scalar: measure(data["text"]),
                                    "scores": data["scores"],
                                    "candidates": [c["text"] for c in data.get("candidates", [])],
                                }
                            )
        finally:
            srv.stop()
        results[label] = rows
    summary: dict[str, dict[str, Any]] = {}
    for label, rows in results.items():
        summary[label] = {}
        for user in task.users:
            mine = [r for r in rows if r["user"] == user]
            values = np.array([np.nan if r[task.scalar] is None else r[task.scalar] for r in mine], dtype=float)
            raw = [r["scores"][user]["raw"] for r in mine]  # type: ignore[index]
            summary[label][user] = {
                "requests": len(mine),
                f"median_{task.scalar}": float(np.nanmedian(values)) if np.isfinite(values).any() else None,
                f"no_{task.scalar}": float(np.mean(~np.isfinite(values))),
                "mean_reward": float(np.mean(raw)),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"task": args.task, "summary": summary, "budget": args.budget, "responses": results}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
