"""The number task (issue 19): the ``number`` reward, generated-token lengths, degenerate-reward
warnings, resume bookkeeping, ``iama probe``, the sequence KL and the matched-KL sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from iama.rewards import RewardSet, create_reward
from iama.rewards.normalization import degenerate_warning
from iama.rewards.number import first_number
from iama.sampling import generated_tokens

IAMA = str(Path(sys.executable).with_name("iama"))


@pytest.mark.inprocess
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42.0),
        ("I pick 7, then 9.", 7.0),
        ("-3.5 degrees", -3.5),
        ("About 1,000 people", 1000.0),
        ("Room B12", None),  # a digit inside a word is not an answer
        ("no number here", None),
        ("1.5.2", 1.5),
    ],
)
def test_first_number_reads_the_first_number_written_in_digits(text, value):
    assert first_number(text) == value


@pytest.mark.inprocess
def test_number_reward_is_a_bounded_quadratic_with_a_floor_for_no_number():
    r = create_reward("number", target=10, scale=100, floor=-1.0)
    got = r.score(["p"] * 5, ["10", "60", "I say 110", "nothing", "99999"])
    assert got.tolist() == pytest.approx([0.0, -0.25, -1.0, -1.0, -1.0])
    assert np.isnan(r.scalar(["none"])[0]) and r.scalar(["x 5"])[0] == 5.0
    assert r.of_scalar(r.scalar(["60"])).tolist() == pytest.approx([-0.25])
    with pytest.raises(ValueError, match="floor"):
        create_reward("number", floor=0.5)


@pytest.mark.inprocess
def test_generated_tokens_drops_only_a_final_eos():
    assert generated_tokens([5, 6, 2], {2}) == 2
    assert generated_tokens([5, 6, 7], {2}) == 3  # truncated at the cap: every token counts
    assert generated_tokens([], {2}) == 0


@pytest.mark.inprocess
def test_token_length_rewards_count_generated_ids_not_a_retokenisation(tiny_llama):
    """Decoded text re-tokenised can count more tokens than were generated (a 64-token
    completion scored as 65); the trainer hands TRL's completion_ids to the rewards instead."""
    from transformers import AutoTokenizer

    from iama_trainer.grpo import reward_funcs

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids)
    rewards = RewardSet(
        {"len": {"type": "length", "target": 0, "max_length": 1, "unit": "tokens", "tokenizer": str(tiny_llama)}}
    )
    counted = [len(ids) + 5]  # what the sampler says it generated, deliberately not len(retokenised)
    assert rewards.score(["p"], [text], token_counts=counted)["len"][0] == -float(counted[0] ** 2)
    eos = tok.eos_token_id
    fn = reward_funcs(rewards, {eos})[0]
    got = fn(prompts=["p"], completions=[text], completion_ids=[[*ids, 7, 7, 7, 7, 7, eos]])
    assert got == [-float((len(ids) + 5) ** 2)]  # the EOS that ended it is not a token of the answer


@pytest.mark.inprocess
def test_a_nearly_constant_reward_is_flagged_before_z_scoring_inflates_it():
    at_cap = np.r_[np.full(92, -0.06), np.linspace(-0.5, -0.1, 8)]  # 92 % of samples at the cap
    msg = degenerate_warning("long", at_cap, normalized=True)
    assert msg is not None and "92%" in msg and "normalization.enabled: false" in msg
    assert degenerate_warning("long", np.linspace(0, 1, 100), normalized=True) is None
    assert degenerate_warning("flat", np.zeros(50), normalized=True) is None  # std 1: not inflated


@pytest.mark.inprocess
def test_training_records_the_degenerate_reward_warning(tmp_path, monkeypatch):
    """run.json keeps what calibration found, so a run on an inflated reward says so."""
    from iama_trainer import calibration, run
    from iama_trainer.config import TrainConfig

    def fake_sample(*a, **k):
        return [["x"] * 10], [[64] * 9 + [20]], [[[1]] * 10]

    monkeypatch.setattr(calibration, "hf_sample", fake_sample)
    cfg = TrainConfig.model_validate(
        {
            "output_dir": str(tmp_path / "r"),
            "rewards": {"long": {"type": "length", "target": 48, "max_length": 64, "unit": "tokens", "tokenizer": "x"}},
            "objective": {"tasks": [{"weights": {"long": 1.0}}]},
            "normalization": {"prompts": 1, "samples_per_prompt": 10},
        }
    )
    (tmp_path / "r").mkdir()

    class Main:
        is_main_process = True

    monkeypatch.setattr("iama.rewards.rules._load_tokenizer", lambda _: None)
    rewards = RewardSet(cfg.rewards)
    monkeypatch.setattr("accelerate.utils.broadcast_object_list", lambda x: x)
    run.reward_statistics(cfg, rewards, None, None, ["p"], False, Main())
    saved = json.loads((tmp_path / "r" / "run.json").read_text())
    assert len(saved["reward_warnings"]) == 1 and "'long': 90%" in saved["reward_warnings"][0]


@pytest.mark.inprocess
def test_resume_without_a_complete_checkpoint_drops_the_aborted_attempts_metrics(tmp_path):
    from iama_trainer.run import METRICS_FILE, resume_point

    (tmp_path / "checkpoints").mkdir()
    metrics = tmp_path / METRICS_FILE
    metrics.write_text('{"step": 1, "kl": 0.1}\n{"step": 2, "kl": 0.2}\n')
    assert resume_point(None, tmp_path / "checkpoints", resume=True) is None
    assert metrics.read_text() == ""  # steps 1 and 2 are trained again and logged again


@pytest.mark.inprocess
def test_shipped_number_prompts_have_a_disjoint_held_out_split():
    from iama_trainer.config import PromptsConfig
    from iama_trainer.data import load_prompts

    train = load_prompts(PromptsConfig(source="builtin:number"))
    held = load_prompts(PromptsConfig(source="builtin:number-heldout"))
    assert len(train) >= 16 and len(held) >= 16 and not set(train) & set(held)
    assert all("100" in p for p in train + held)  # every prompt states the range
    with pytest.raises(ValueError, match="no shipped prompt set 'nope'"):
        load_prompts(PromptsConfig(source="builtin:nope"))


@pytest.mark.inprocess
def test_sequence_logprobs_equal_the_samplers_own_token_scores(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iama_eval.sequence_kl import sequence_logprobs
    from iama_trainer.sampling import render_prompt

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    prompt = [{"role": "user", "content": "Pick a number."}]
    enc = tok(render_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **enc, do_sample=True, top_k=0, max_new_tokens=6, num_return_sequences=3,
        output_scores=True, return_dict_in_generate=True, pad_token_id=tok.eos_token_id,
    )  # fmt: skip
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    ids = [[row.tolist() for row in new]]
    got = sequence_logprobs(model, tok, [prompt], ids)
    assert got[0] == pytest.approx(scores.sum(dim=1).numpy(), abs=1e-4)


def number_config(tmp_path: Path, tiny_llama: Path) -> Path:
    cfg = yaml.safe_load((Path(__file__).parents[1] / "trainer/iama_trainer/configs/number.yaml").read_text())
    cfg.update(
        model=str(tiny_llama),
        output_dir=str(tmp_path / "unused"),
        group_size=4,
        prompts_per_step=2,
        steps=2,
        save_steps=2,
        snapshot_steps=1,
        learning_rate=1e-3,
        tensorboard=False,
        normalization={"enabled": False, "record": False},
    )
    cfg["prompts"]["limit"] = 4
    path = tmp_path / "number.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.inprocess
def test_iama_probe_measures_the_base_and_predicts_the_optima(tmp_path, tiny_llama):
    cfg = number_config(tmp_path, tiny_llama)
    out = subprocess.run(
        [IAMA, "probe", str(cfg), "--output-dir", str(tmp_path / "probe"), "--samples-per-prompt", "4",
         "--max-tokens", "6", "--engine", "hf", "--kl", "0.1"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["max_tokens"] == 6 and probe["prompts"] == 4 and probe["samples_per_prompt"] == 4
    assert 0.0 <= probe["length"]["truncated_fraction"] <= 1.0
    assert set(probe["rewards"]) == {"low", "high"} and probe["scalars"]["low"]["scalar"] == "number"
    samples = probe["samples"]
    assert len(samples["tokens"]) == 16 and all(t <= 6 for t in samples["tokens"])
    assert samples["truncated"] == [t == 6 for t in samples["tokens"]]
    pred = probe["prediction"]
    methods = [r["method"] for r in pred["rows"]]
    assert methods == ["base", "iama", "linear", "iama", "linear"]
    for r in pred["rows"]:
        assert sum(r["probs"]) == pytest.approx(1.0) and len(r["probs"]) == len(pred["support"])
    assert pred["rows"][3]["kl"] == pytest.approx(0.1, rel=1e-2) or pred["rows"][3]["beta"] == pytest.approx(1e-4)
    assert probe["figure"] == "probe.png" and (tmp_path / "probe" / "probe.png").stat().st_size > 0  # beside it
    bad = subprocess.run([IAMA, "probe", str(cfg), "--kl", "-1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip() == "iama probe: --kl must be > 0"


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_matched_kl_sweep_evaluates_every_snapshot_and_resumes(tmp_path, tiny_llama):
    cfg = number_config(tmp_path, tiny_llama)
    sweep = {
        "base": str(cfg),
        "output_dir": str(tmp_path / "sweep"),
        "weights": [[0.5, 0.5]],
        "objective_types": ["iama", "linear"],
        "seeds": [0, 1],
        "eval": {
            "prompts": {"source": "builtin:number-heldout", "limit": 3},
            "samples_per_prompt": 4,
            "budgets": [1, 2, 4],
            "max_tokens": 8,
            "engine": "hf",
            "dtype": "float32",
            "snapshots": True,
            "kl_samples": 2,
        },
        "bootstrap": 30,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    root = tmp_path / "sweep"
    train_only = subprocess.run(
        [IAMA, "sweep", str(path), "--train-only"], capture_output=True, text=True, timeout=3600
    )
    assert train_only.returncode == 0, train_only.stderr[-4000:]
    assert not (root / "path_scores.json").exists()  # trained, nothing evaluated
    out = subprocess.run([IAMA, "sweep", str(path)], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "training " not in out.stderr
    for label in ("iama_w0.5-0.5_s0", "linear_w0.5-0.5_s1"):
        snaps = sorted(p.name for p in (root / "runs" / label / "snapshots").iterdir())
        assert snaps == ["step-000001", "step-000002"]
    raw = json.loads((root / "path_scores.json").read_text())
    assert set(raw["points"]) == {"base@0"} | {
        f"{t}_w0.5-0.5_s{s}@{k}" for t in ("iama", "linear") for s in (0, 1) for k in (1, 2)
    }
    assert raw["scalar"] == "number"
    base = raw["points"]["base@0"]
    assert np.all(np.asarray(base["log_ratio"]) == 0) and len(base["scores"]["low"]) == 3
    trained = raw["points"]["iama_w0.5-0.5_s0@2"]
    assert np.any(np.asarray(trained["log_ratio"]) != 0)  # lr 1e-3 moved the policy
    assert np.asarray(trained["log_ratio"]).shape == (3, 2)  # kl_samples of each prompt's 4
    summary = json.loads((root / "kl_path.json").read_text())
    assert summary["own_n"] == 4 and summary["seeds"] == {"iama": [0, 1], "linear": [0, 1]}
    steps = {(r["method"], r["step"]) for r in summary["path"]}
    assert steps == {(m, k) for m in ("iama", "linear") for k in (0, 1, 2)}
    for r in summary["path"]:
        lo, hi = r["g@4"]["ci95"]
        assert lo - 1e-9 <= r["g@4"]["mean"] <= hi + 1e-9
        assert r["low_bon4@4"]["mean"] >= r["low_bon4@1"]["mean"] - 1e-9  # BoN on a user's own reward helps it
    assert all("kl" in m and "linear_smallest_n_reaching_iama" in m for m in summary["matched_kl"])
    for name in ("kl_path.png", "bon_by_n.png", "histograms.png", "kl_path.csv"):
        assert (root / name).stat().st_size > 0
    again = subprocess.run([IAMA, "sweep", str(path)], capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0 and "training " not in again.stderr and "evaluating " not in again.stderr

    # A sweep of another objective shares linear's runs and points (linear trains on the same mixed
    # reward): min aggregation, only IAMA trained and evaluated anew.
    shared = {**sweep, "output_dir": str(tmp_path / "min"), "seeds": [0], "reuse": {"linear": str(root)},
              "set": {"objective.aggregation.kind": "min"}}  # fmt: skip
    (tmp_path / "min.yaml").write_text(yaml.safe_dump(shared))
    out = subprocess.run([IAMA, "sweep", str(tmp_path / "min.yaml")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "training iama_w0.5-0.5_s0" in out.stderr and "training linear" not in out.stderr
    assert "evaluating iama_w0.5-0.5_s0" in out.stderr
    assert "evaluating linear" not in out.stderr and "evaluating base" not in out.stderr
    summary = json.loads((tmp_path / "min" / "kl_path.json").read_text())
    assert summary["seeds"] == {"iama": [0], "linear": [0]}
    for r in summary["path"]:  # g is now the worse user's value
        assert r["g@4"]["mean"] <= 0.5 * (r["low_bon4@4"]["mean"] + r["high_bon4@4"]["mean"]) + 1e-9
    raw = json.loads((tmp_path / "min" / "path_scores.json").read_text())  # the shared points are its own now;
    raw["points"] = {k: p for k, p in raw["points"].items() if p["method"] == "iama"}  # dropped, they come back
    (tmp_path / "min" / "path_scores.json").write_text(json.dumps(raw))  # with nothing left to evaluate
    out = subprocess.run([IAMA, "sweep", str(tmp_path / "min.yaml")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0 and "evaluating " not in out.stderr, out.stderr[-4000:]
    assert json.loads((tmp_path / "min" / "kl_path.json").read_text())["seeds"] == {"iama": [0], "linear": [0]}
    # The report of soft-BoN users from the same points (no sampling: --report reads path_scores.json)
    soft = {**sweep, "output_dir": str(tmp_path / "soft"), "set": {
        f"objective.tasks.{i}": {"name": f"{u}_soft", "weights": {u: 1.0}, "algorithm": "soft_bon", "n": 2, "tau": 0.3}
        for i, u in enumerate(("low", "high"))}}  # fmt: skip
    (tmp_path / "soft").mkdir()
    (tmp_path / "soft" / "path_scores.json").write_bytes((root / "path_scores.json").read_bytes())
    (tmp_path / "soft.yaml").write_text(yaml.safe_dump(soft))
    out = subprocess.run([IAMA, "sweep", str(tmp_path / "soft.yaml"), "--report"], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads((tmp_path / "soft" / "kl_path.json").read_text())
    assert summary["tasks"] == ["low_soft", "high_soft"] and summary["own_n"] == 2
    for r in summary["path"]:  # a softmax pick among N beats a uniform one (up to the subsets' Monte Carlo)
        assert r["low_soft@4"]["mean"] >= r["low_soft@1"]["mean"] - 0.05
    assert all("difference_g@2" in m for m in summary["matched_kl"])  # compared at soft BoN's own N
    # ... and refuses runs that another config would have trained differently, in one line
    other = {**shared, "output_dir": str(tmp_path / "other"), "set": {"learning_rate": 5e-4}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    bad = subprocess.run([IAMA, "sweep", str(tmp_path / "other.yaml")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "training " not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"iama sweep: reuse: linear_w0.5-0.5_s0 in {root / 'runs' / 'linear_w0.5-0.5_s0'} was trained with another "
        "'learning_rate'"
    )


@pytest.mark.inprocess
def test_the_model_cards_kl_averages_the_last_logged_steps_not_one_noisy_step():
    from iama_trainer.run import final_kl

    history = [{"kl": 0.5}, {"loss": 1.0}, *({"kl": k} for k in (0.1, 0.08, 0.12, 0.09, 0.168))]
    assert final_kl(history) == pytest.approx((0.1 + 0.08 + 0.12 + 0.09 + 0.168) / 5)
    assert final_kl([{"loss": 1.0}]) is None
