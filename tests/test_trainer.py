"""Non-linear GRPO on TRL: the hook, the surrogate, and real training steps on a tiny model."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_models import MANY_STOPS

from iama.objective import Aggregation, Objective, Task
from iama.rewards import RewardSet, RewardStats
from iama.variations import grouped_first_variation

IAMA = str(Path(sys.executable).with_name("iama"))
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.mark.inprocess
def test_trl_hook_point_is_where_we_expect():
    from iama_trainer.grpo import check_trl_hook

    check_trl_hook()  # pinned trl==1.16.0: GRPOTrainer._calculate_rewards(self, inputs, prompts, ...)


@pytest.mark.inprocess
def test_a_moved_hook_fails_loudly(monkeypatch):
    from trl import GRPOTrainer

    from iama_trainer.grpo import check_trl_hook

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", lambda self, inputs: None)
    with pytest.raises(RuntimeError, match="changed signature"):
        check_trl_hook()
    monkeypatch.delattr(GRPOTrainer, "_calculate_rewards")
    with pytest.raises(RuntimeError):
        check_trl_hook()


@pytest.mark.inprocess
def test_nonlinear_and_linear_objectives_give_different_advantages():
    from iama_trainer.surrogate import SurrogateSpec, compute_surrogate

    rng = np.random.default_rng(0)
    raw = rng.normal(size=(16, 2))  # two groups of 8, rewards a and b
    objective = Objective(
        tasks=[Task(weights={"a": 1.0}, algorithm="bon", n=4), Task(weights={"b": 1.0}, algorithm="bon", n=4)],
        aggregation=Aggregation(kind="weighted", weights=[0.5, 0.5]),
    )
    rewards = RewardSet({"a": "conciseness", "b": "sentiment"}).with_stats({"a": RewardStats(mean=0.5, std=2.0)})
    iama = compute_surrogate(raw, SurrogateSpec(rewards, objective, "iama"), 8)
    lin = compute_surrogate(raw, SurrogateSpec(rewards, objective, "linear"), 8)
    tr = np.stack([(raw[:, 0] - 0.5) / 2.0, raw[:, 1]])
    assert lin.rewards == pytest.approx(0.5 * tr[0] + 0.5 * tr[1])
    assert iama.rewards == pytest.approx(grouped_first_variation(tr, 8, objective.tasks, objective.aggregation))

    def advantages(r):
        g = r.reshape(-1, 8)
        return ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()

    assert not np.allclose(advantages(iama.rewards), advantages(lin.rewards), atol=1e-2)
    # BoN_4 concentrates credit on the top of each group: the best sample's advantage grows.
    assert iama.group_values.shape == (2, 2) and isinstance(iama.objective, float)
    with pytest.raises(ValueError, match="whole number of groups"):
        compute_surrogate(raw[:12], SurrogateSpec(rewards, objective, "iama"), 8)


@pytest.mark.inprocess
def test_full_finetuning_keeps_fp32_master_weights_under_bf16():
    import torch

    from iama_trainer.run import weights_dtype

    assert weights_dtype(bf16=True, lora=False) == "float32"
    assert weights_dtype(bf16=False, lora=False) == "float32"
    assert weights_dtype(bf16=True, lora=True) == "bfloat16"
    # Why: an AdamW-sized step (~lr) on a typical weight vanishes in bf16 but not in fp32.
    w = torch.full((4,), 0.05)
    assert torch.equal((w.bfloat16() + 1e-5).float(), w.bfloat16().float())
    assert not torch.equal(w + 1e-5, w)


@pytest.mark.inprocess
def test_presets_and_config_errors(tmp_path):
    from iama_trainer.config import load_config

    length = load_config("length")
    assert [t.n for t in length.objective.tasks] == [4, 4]
    assert load_config("sentiment").rewards["negative"].type == "negative_sentiment"
    tone = load_config("tone")  # two tones on one scalar: the probe can predict them
    from iama.rewards import RewardSet
    from iama_eval.prediction import shared_scalar

    assert shared_scalar(RewardSet(tone.rewards), list(tone.rewards)) == "VADER compound"
    over = load_config("length", {"objective.tasks.0.n": 2, "objective.type": "linear", "steps": 3})
    assert over.objective.tasks[0].n == 2 and over.objective.type == "linear" and over.steps == 3

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rewards": {"a": "length"}, "objective": {"tasks": [{"weights": {"zz": 1}}]}}))
    with pytest.raises(ValueError, match=r"objective\.tasks\.0\.weights: unknown reward"):
        load_config(str(bad))
    bad.write_text(
        yaml.safe_dump(
            {
                "rewards": {"a": "length"},
                "objective": {"tasks": [{"weights": {"a": 1}}]},
                "group_size": 1,
                "lernrate": 3,
            }
        )
    )
    with pytest.raises(ValueError) as err:
        load_config(str(bad))
    assert "group_size" in str(err.value) and "lernrate" in str(err.value)
    with pytest.raises(ValueError, match="presets"):
        load_config("no-such-preset")


def tiny_config(tmp_path: Path, tiny_llama: Path, name: str, **extra) -> Path:
    cfg = {
        "model": str(tiny_llama),
        "output_dir": str(tmp_path / name),
        "rewards": {
            "short": {"type": "length", "target": 5, "max_length": 20, "unit": "tokens"},
            "pos": {"type": "sentiment"},
        },
        "objective": {
            "tasks": [
                {"name": "short", "weights": {"short": 1.0}, "algorithm": "bon", "n": 4},
                {"name": "pos", "weights": {"pos": 1.0}, "algorithm": "soft_bon", "tau": 0.5},
            ],
            "aggregation": {"kind": "smooth_min", "gamma": 0.5},
        },
        "normalization": {"prompts": 2, "samples_per_prompt": 4},
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 4,
        "max_completion_length": 12,
        "save_steps": 2,
        "learning_rate": 1e-3,
        "kl_control": {"type": "adaptive", "target": 0.01},
        "sampling": {"stop": MANY_STOPS},  # rollouts end at a stop token: most within the cap
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_iama(*args: str, timeout: float = 1800, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IAMA, *args], capture_output=True, text=True, timeout=timeout, env=env)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama):
    import os

    os.umask(0o022)  # the usual umask: what the run writes must come out 0644 / 0755
    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(tmp, tiny_llama, "run")
    # A TensorBoard directory left in the environment (by an earlier run in the same process, say)
    # must not capture this run's events.
    out = run_iama("train", str(cfg), env={**os.environ, "TENSORBOARD_LOGGING_DIR": str(tmp / "elsewhere")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp / "elsewhere").exists()
    return tmp, cfg, tmp / "run"


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_training_writes_checkpoint_card_metrics_and_tensorboard(trained, tiny_llama):
    _, _, run = trained
    from transformers import AutoModelForCausalLM

    from iama.modelcard import load_model_card

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), base.parameters(), strict=True))
    assert moved > 0  # real optimizer steps happened
    card = load_model_card(run / "model")
    assert card is not None and card.objective is not None
    assert card.objective_type == "iama" and card.training["steps"] == 4
    assert card.rewards["short"].stats is not None and card.rewards["short"].stats.count == 8
    assert card.rewards["short"].params.get("tokenizer") is None  # portable: bound by whoever loads it
    assert card.kl is not None and card.beta is not None

    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "rewards/short/mean",
        "rewards/pos/mean",
        "reward",
        "kl",
        "beta",
        "completions/mean_length",
        "iama/objective",
        "iama/R/short",
        "iama/R/pos",
        "entropy",
    ):
        assert all(key in r for r in rows), key
    assert rows[0]["beta"] == 0.04 and rows[-1]["beta"] != 0.04  # adaptive controller moved β
    assert rows[-1]["iama/advantages_verified"] == 1.0  # TRL's advantages were the surrogate's
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for ck in ("checkpoint-2", "checkpoint-4"):
        assert (run / "checkpoints" / ck / "iama-complete.json").is_file()
    assert json.loads((run / "run.json").read_text())["reward_stats"]["short"]["count"] == 8
    # sampling.stop reached TRL's rollouts (its EOS alone, 1 token in 600, would clip ~all of
    # them at 12 tokens) and stayed out of the saved model, which ends where its users say
    clipped = [r["completions/clipped_ratio"] for r in rows]
    assert np.mean(clipped) < 0.8, clipped
    saved = json.loads((run / "model" / "generation_config.json").read_text())["eos_token_id"]
    assert saved == json.loads((tiny_llama / "generation_config.json").read_text())["eos_token_id"]


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_what_a_run_writes_is_readable_by_another_user(trained):
    import stat

    _, _, run = trained
    files = [
        run / "model" / "iama.json",
        run / "model" / "model.safetensors",
        run / "model" / "config.json",
        run / "run.json",
        run / "metrics.jsonl",
        run / "checkpoints" / "checkpoint-4" / "iama-complete.json",
        run / "checkpoints" / "checkpoint-4" / "iama-state.json",
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    for d in (run / "model", run / "checkpoints" / "checkpoint-4"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_resume_after_a_torn_checkpoint_continues_exactly(trained):
    tmp, cfg, run = trained
    torn = tmp / "torn"
    shutil.copytree(run, torn)
    # What a kill during the step-4 save leaves: checkpoint-4 without its marker and weights, no final model.
    shutil.rmtree(torn / "model")
    (torn / "checkpoints" / "checkpoint-4" / "iama-complete.json").unlink()
    (torn / "checkpoints" / "checkpoint-4" / "model.safetensors").unlink()
    lines = (torn / "metrics.jsonl").read_text().splitlines()
    (torn / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")

    out = run_iama("train", str(cfg), "--output-dir", str(torn), "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    a = {r["step"]: r for r in metrics(run) if "loss" in r}
    b = {r["step"]: r for r in metrics(torn) if "loss" in r}
    for step in (3, 4):
        for key in ("loss", "rewards/short/mean", "rewards/pos/mean", "kl", "beta", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-9), (step, key)
    from safetensors.torch import load_file

    wa, wb = load_file(run / "model" / "model.safetensors"), load_file(torn / "model" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_killed_run_resumes_to_completion(tmp_path, tiny_llama):
    cfg = tiny_config(tmp_path, tiny_llama, "killed", steps=40, save_steps=2, normalization={"enabled": False})
    run = tmp_path / "killed"
    proc = subprocess.Popen([IAMA, "train", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1800
    # Kill as soon as any checkpoint is complete: 40 steps leave far more than one poll's time.
    while not list((run / "checkpoints").glob("checkpoint-*/iama-complete.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (run / "model").exists()
    out = run_iama("train", str(cfg), "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps[-1] == 40 and (run / "model" / "iama.json").is_file()
    assert steps == sorted(set(steps))  # rows logged after the resumed checkpoint were not kept twice


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_two_processes_keep_groups_whole(tmp_path, tiny_llama):
    cfg = tiny_config(tmp_path, tiny_llama, "ddp", steps=2, kl_control={"type": "fixed"})
    cmd = [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        IAMA,
        "train",
        str(cfg),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in metrics(tmp_path / "ddp") if "loss" in r]
    assert all(r["iama/processes"] == 2 for r in rows)
    # every gathered batch (2 prompts × 4 completions over 2 processes) was checked group by group
    assert rows[-1]["iama/groups_checked"] == 4
    assert rows[-1]["iama/advantages_verified"] == 1.0  # each process's slice of TRL's advantages


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_linear_baseline_and_lora(tmp_path, tiny_llama):
    cfg = tiny_config(
        tmp_path,
        tiny_llama,
        "lin",
        steps=2,
        objective={"type": "linear", "tasks": [{"weights": {"short": 1.0}}]},
        lora={"enabled": True, "r": 4, "alpha": 8},
        kl_control={"type": "fixed"},
        beta=0.0,
    )
    out = run_iama("train", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    model_dir = tmp_path / "lin" / "model"
    assert not (model_dir / "adapter_config.json").exists()  # merged into a plain checkpoint
    from transformers import AutoModelForCausalLM

    from iama.modelcard import load_model_card

    AutoModelForCausalLM.from_pretrained(model_dir)
    assert load_model_card(model_dir).objective_type == "linear"


@pytest.mark.inprocess
def test_cli_rejects_bad_config_and_existing_output(tmp_path, tiny_llama):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rewards: {a: length}\nobjective: {tasks: [{weights: {b: 1}}]}\n")
    out = run_iama("train", str(bad))
    assert out.returncode == 2 and "unknown reward" in out.stderr
    cfg = tiny_config(tmp_path, tiny_llama, "exists")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "something").write_text("x")
    out = run_iama("train", str(cfg))
    assert out.returncode == 1 and "--resume" in out.stderr  # valid arguments that cannot be carried out


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_an_unmerged_lora_run_is_served_on_its_base_and_merged_by_merge_lora(tmp_path, tiny_llama):
    """``iama serve --model runs/run/model`` (an adapter) serves its base with the adapter, named
    after the run, as the model of requests that name none, scored with its iama.json's rewards
    (tests/test_adapters.py: adapters in depth); ``iama merge-lora`` makes it one checkpoint."""
    import stat

    import httpx
    from peft import LoraConfig, get_peft_model
    from servers import start_server
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "run" / "model"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(adapter)
    (adapter / "iama.json").write_text(json.dumps({"base_model": "tiny", "rewards": {"s": {"type": "sentiment"}}}))
    (tmp_path / "run" / "run.json").write_text("{}")

    only_length = {"IAMA_DEFAULT_REWARDS": "false", "IAMA_REWARDS": '{"short": {"type": "length"}}'}
    srv = start_server(str(adapter), tmp_path, env=only_length)
    try:
        models = httpx.get(f"{srv.url}/v1/models", timeout=60).json()["data"]
        assert [(m["id"], m["parent"]) for m in models] == [(str(tiny_llama), None), ("run", str(tiny_llama))]
        assert httpx.get(f"{srv.url}/health", timeout=60).json() == {"status": "ok", "model": "run"}
        body = {"prompt": "Hi", "reward_weights": {"s": 1.0}, "budget": 2, "max_tokens": 4}
        r = httpx.post(f"{srv.url}/v1/align", json=body, timeout=300)
        assert r.status_code == 200 and r.json()["model"] == "run", r.text
        r = httpx.post(f"{srv.url}/v1/align", json={**body, "model": str(tiny_llama)}, timeout=300)
        assert r.status_code == 400 and r.json()["error"]["param"] == "reward_weights.s"  # the base's rewards
    finally:
        srv.stop()

    merged = tmp_path / "merged"
    out = run_iama("merge-lora", str(adapter), str(merged))
    assert out.returncode == 0, out.stderr[-3000:]
    from iama.models import resolve_model

    assert resolve_model(str(merged)) == str(merged.resolve())  # a servable checkpoint now
    AutoModelForCausalLM.from_pretrained(merged)
    assert json.loads((merged / "iama.json").read_text())["base_model"] == "tiny"
    assert stat.S_IMODE((merged / "model.safetensors").stat().st_mode) & 0o044 == 0o044
    again = run_iama("merge-lora", str(adapter), str(merged))
    assert again.returncode == 1 and again.stderr.strip().endswith("exists and is not empty")


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_a_rubric_judged_in_process_trains_and_is_probed(tmp_path, tiny_llama):
    """A judge reward (the tiny model judging in this process) is a reward like any other:
    training meta-aligns for it, the probe describes it; one without a model or url (the
    serving engine's) is refused in training, naming it."""
    judge = {"type": "judge", "rubric": "answers in few, simple words", "model": str(tiny_llama), "dtype": "float32"}
    rewards = {"short": {"type": "length", "target": 5, "max_length": 20, "unit": "tokens"}, "simple": judge}
    objective = {
        "tasks": [
            {"name": "short", "weights": {"short": 1.0}, "algorithm": "bon", "n": 4},
            {"name": "simple", "weights": {"simple": 1.0}, "algorithm": "bon", "n": 4},
        ]
    }
    cfg = tiny_config(tmp_path, tiny_llama, "judged", steps=2, rewards=rewards, objective=objective)
    out = run_iama("train", str(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [m for m in metrics(tmp_path / "judged") if "rewards/simple/mean" in m]
    assert len(rows) == 2 and all(0.0 <= m["rewards/simple/mean"] <= 1.0 for m in rows)
    out = run_iama("probe", str(cfg), "--output-dir", str(tmp_path / "probe"), "--samples-per-prompt", "2",
                   "--max-tokens", "6", "--engine", "hf")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert set(probe["rewards"]) == {"short", "simple"} and 0 <= probe["rewards"]["simple"]["mean"] <= 1

    on_engine = {**rewards, "simple": {"type": "judge", "rubric": "x"}}
    served_only = tiny_config(tmp_path, tiny_llama, "bad", rewards=on_engine, objective=objective)
    out = run_iama("train", str(served_only))
    assert out.returncode != 0 and "rewards.simple: a judge in training needs `model`" in out.stderr
