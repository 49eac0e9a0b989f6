"""Non-linear (IAMA) vs linear GRPO on a preset: step-time overhead and reward under BoN_N.

    python benchmarks/trainer_compare.py --preset length --steps 40

1. Trains the preset twice with ``iama train`` (objective iama, then linear), same seed/config.
2. Times the surrogate alone on a large gathered batch (the only extra work IAMA adds).
3. Samples M completions per held-out prompt from the base, linear and IAMA models with vLLM and
   reports, per task, the unbiased BoN_N estimate of the task reward (normalised with the
   statistics measured on the base model) for N in {1, 2, 4, 8}, and g(R_1..R_m) at the tasks' N.
Prints a table and writes results JSON next to the runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HELD_OUT = [
    "Describe a quiet evening at home.",
    "What do you think about cycling to work?",
    "Tell me about a museum visit.",
    "Write a note to a friend who moved away.",
    "How was your last holiday?",
    "Describe a crowded train.",
    "What is your opinion of cooking shows?",
    "Tell me about a rainy afternoon.",
    "Describe a new coffee shop.",
    "What do you think about early mornings?",
    "Tell me about a school trip.",
    "Describe a sports event you watched.",
    "Write a short review of a laptop.",
    "What do you think about city parks?",
    "Describe a long drive.",
    "Tell me about a board game night.",
]


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def mean_step_time(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in rows if "step_time" in r]
    return float(np.mean(times[1:])) if len(times) > 1 else float("nan")  # first step includes warm-up


def surrogate_overhead(cfg, batch: int = 1024) -> dict[str, float]:
    from iama_trainer.surrogate import compute_surrogate

    rng = np.random.default_rng(0)
    names = list(cfg.rewards)
    raw = rng.normal(size=(batch, len(names)))
    out = {}
    for kind in ("iama", "linear"):
        t0 = time.perf_counter()
        for _ in range(20):
            compute_surrogate(raw, names, cfg.objective, kind, {}, cfg.group_size)
        out[kind] = (time.perf_counter() - t0) / 20
    return out


def sample(model_dir: str, prompts: list[str], m: int, max_tokens: int, seed: int) -> list[list[str]]:
    """M chat completions per prompt with vLLM, through the same sampler as ``iama eval``."""
    from iama.sampling import SamplingSettings
    from iama_eval.generate import sample_vllm

    chats = [[{"role": "user", "content": p}] for p in prompts]
    texts, _, _ = sample_vllm(model_dir, chats, m, max_tokens, SamplingSettings(), seed=seed)
    return texts


def evaluate(cfg, card, samples: list[list[str]], prompts: list[str], budgets: list[int]) -> dict:
    from iama.algorithms import bon_unbiased_estimate, soft_bon_value
    from iama.objective import aggregation_value
    from iama.rewards import RewardSet, bind_tokenizer

    model_path = card.training["base_model_path"]
    rs = RewardSet(bind_tokenizer(card.rewards, model_path))
    per_task: dict[str, dict[str, float]] = {}
    at_n = []
    lengths = [len(c.split()) for g in samples for c in g]
    for i, task in enumerate(card.objective.tasks):
        label = task.name or f"task{i}"
        vals: dict[int, list[float]] = {n: [] for n in budgets}
        meta: list[float] = []
        for p, group in zip(prompts, samples, strict=True):
            scores = rs.score([p] * len(group), group, list(task.weights))
            r = rs.combine(scores, task.weights)
            for n in budgets:
                vals[n].append(bon_unbiased_estimate(r, n))
            meta.append(
                bon_unbiased_estimate(r, int(task.n)) if task.algorithm == "bon" else soft_bon_value(r, task.tau)
            )
        per_task[label] = {f"BoN{n}": float(np.mean(v)) for n, v in vals.items()}
        per_task[label]["at_task_T"] = float(np.mean(meta))
        at_n.append(float(np.mean(meta)))
    return {
        "tasks": per_task,
        "objective_g": aggregation_value(at_n, card.objective.aggregation),
        "mean_words": float(np.mean(lengths)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="length")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--samples", type=int, default=16, help="M completions per held-out prompt")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for iama train")
    args = ap.parse_args()

    from iama.modelcard import load_model_card
    from iama.models import resolve_model
    from iama_trainer.config import load_config

    out = Path(args.out) / args.preset
    iama_bin = str(Path(sys.executable).with_name("iama"))
    results: dict = {"preset": args.preset, "steps": args.steps, "overrides": args.overrides}
    wall = {}
    for kind in ("iama", "linear"):
        d = out / kind
        if not args.skip_train:
            wall[kind] = run(
                [
                    iama_bin,
                    "train",
                    args.preset,
                    "--overwrite",
                    "--output-dir",
                    str(d),
                    "--set",
                    f"steps={args.steps}",
                    "--set",
                    f"objective.type={kind}",
                    "--set",
                    f"save_steps={args.steps}",
                    *[x for o in args.overrides for x in ("--set", o)],
                ]
            )
        results[f"{kind}_mean_step_s"] = mean_step_time(d)
    results["train_wall_s"] = wall
    cfg = load_config(args.preset)
    results["surrogate_s_per_1024_samples"] = surrogate_overhead(cfg)

    card = load_model_card(out / "iama" / "model")
    budgets = [n for n in (1, 2, 4, 8) if n <= args.samples]
    models = {
        "base": resolve_model(cfg.model),
        "linear": str(out / "linear" / "model"),
        "iama": str(out / "iama" / "model"),
    }
    results["eval"] = {}
    for name, path in models.items():
        samples = sample(path, HELD_OUT, args.samples, cfg.max_completion_length, seed=1)
        results["eval"][name] = evaluate(cfg, card, samples, HELD_OUT, budgets)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
