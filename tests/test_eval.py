"""``iama eval``: selection expectations, summaries, and full runs on tiny models (HF and vLLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_models import MANY_STOPS

from iama.rewards import RewardSet

IAMA = str(Path(sys.executable).with_name("iama"))


@pytest.mark.inprocess
def test_config_validation():
    from iama_eval.config import load_eval_config

    with pytest.raises(ValueError, match="samples_per_prompt"):
        load_eval_config(None, models={"a": "default"}, samples_per_prompt=4, budgets=[1, 8])
    with pytest.raises(ValueError, match="not one of models"):
        load_eval_config(None, models={"a": "default"}, baseline="b")
    cfg = load_eval_config(None, models={"a": "default"})
    assert cfg.samples == 16 and cfg.budgets == [1, 2, 4, 8, 16]


@pytest.mark.inprocess
def test_weight_grid_and_selection_expectations():
    from iama_eval.evaluate import evaluate_model, summarize, weight_grid

    assert weight_grid(["a", "b", "c"], 3) == [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 1.0}]
    rs = RewardSet({"a": "conciseness", "b": "sentiment"})
    raw = {"a": np.array([[0.1, 0.5, 0.9, 0.3]]), "b": np.array([[1.0, -1.0, 0.0, 0.5]])}
    lengths = np.array([[10, 20, 30, 40]])
    rows = evaluate_model("m", raw, lengths, rs, [{"a": 1.0, "b": 0.0}], [1, 4], ["bon"], 0.1, 0)
    n1, n4 = rows
    assert n1.raw["a"] == pytest.approx(0.45) and n1.mean_tokens == pytest.approx(25)  # N=1: the policy's mean
    assert n4.raw["a"] == pytest.approx(0.9) and n4.raw["b"] == 0.0 and n4.mean_tokens == 30  # N=M: the argmax
    rows2 = evaluate_model(
        "m2", {k: v - 1 for k, v in raw.items()}, lengths, rs, [{"a": 1.0, "b": 0.0}], [1, 4], ["bon"], 0.1, 0
    )
    s = summarize(rows + rows2, ["a", "b"], baseline="m2", candidate="m")
    cs = s["compute_saving"]["bon"]
    assert cs["smallest_n_matching_on_average"] == 1  # m at N=1 already beats m2 at N=4
    assert s["hypervolume"]["m"]["bon"]["4"] > s["hypervolume"]["m2"]["bon"]["4"]


@pytest.mark.inprocess
def test_mirror_rewards_are_flagged_as_a_degenerate_trade_off():
    from iama_eval.evaluate import trade_off_warnings

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(4, 8))
    mirror = {"m": {"pos": pos, "neg": -pos}, "m2": {"pos": pos + 1, "neg": -pos - 1}}
    (w,) = trade_off_warnings(mirror, ["pos", "neg"])
    assert "anti-collinear" in w and "-1.000" in w
    independent = {"m": {"pos": pos, "len": rng.normal(size=(4, 8))}}
    assert trade_off_warnings(independent, ["pos", "len"]) == []
    assert "constant" in trade_off_warnings({"m": {"pos": pos, "c": np.zeros((4, 8))}}, ["pos", "c"])[0]


@pytest.fixture(scope="module")
def second_tiny(tmp_path_factory):
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-2"), seed=1)


def _config(tmp_path, models, engine, **extra):
    cfg = {
        "models": models,
        "output_dir": str(tmp_path / "eval"),
        "prompts": {"source": "builtin", "limit": 3},
        "rewards": {
            # characters, not tokens: the tiny random model never stops before the cap, so its
            # generated token count is constant (a degenerate trade-off); its texts' lengths vary
            "short": {"type": "length", "target": 20, "max_length": 64, "unit": "chars"},
            "pos": {"type": "sentiment"},
        },
        "grid": 3,
        "budgets": [1, 2, 4],
        "algorithms": ["bon", "soft_bon"],
        "max_tokens": 12,
        "engine": engine,
        **extra,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.inprocess
def test_eval_end_to_end_with_hf_engine_and_cache(tmp_path, tiny_llama, second_tiny, monkeypatch):
    from iama_eval import generate as gen_mod
    from iama_eval.config import load_eval_config
    from iama_eval.run import run_eval

    path = _config(
        tmp_path, {"base": str(tiny_llama), "other": str(second_tiny)}, "hf", baseline="base", candidate="other"
    )
    summary = run_eval(load_eval_config(str(path)))
    out = tmp_path / "eval"
    for f in ("results.csv", "results.json", "pareto_bon.png", "pareto_soft_bon.png", "lengths.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 3 * 2 * 3  # models × weights × algorithms × budgets
    assert set(summary["hypervolume"]) == {"base", "other"}
    assert summary["compute_saving"]["bon"]["max_n"] == 4
    assert set(summary["compute_saving"]["bon"]["candidate_mean_by_n"]) == {1, 2, 4}
    assert summary["warnings"] == []  # length vs sentiment: a real trade-off
    # BoN can only help the weighted score it selects on
    rows = [r for r in summary["rows"] if r["model"] == "base" and r["algorithm"] == "bon"]
    by_n = {n: np.mean([r["weighted"] for r in rows if r["budget"] == n]) for n in (1, 2, 4)}
    assert by_n[1] <= by_n[2] + 1e-9 <= by_n[4] + 2e-9

    def boom(*a, **k):
        raise AssertionError("generations must come from the cache")

    monkeypatch.setattr(gen_mod, "sample_hf", boom)
    again = run_eval(load_eval_config(str(path)))  # resumes from cached generations
    assert again["hypervolume"] == summary["hypervolume"]

    # A retrain into the same directory must not reuse the old generations.
    import os

    weights = second_tiny / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="must come from the cache"):
        run_eval(load_eval_config(str(path)))


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_eval_cli_with_vllm(tmp_path, tiny_llama):
    path = _config(tmp_path, {"tiny": str(tiny_llama)}, "vllm", algorithms=["bon"], sampling={"stop": MANY_STOPS})
    out = subprocess.run(
        [IAMA, "eval", str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "tiny" in summary["mean_tokens"] and summary["figures"]
    gens = json.loads((tmp_path / "eval" / "generations" / "tiny.json").read_text())
    assert len(gens["completions"]) == 3 and all(len(g) == 4 for g in gens["completions"])
    # vLLM stopped at the first stop token (stop_token_ids), kept it, and counted it as an EOS
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    stops = {i for t in MANY_STOPS for i in tok.encode(t, add_special_tokens=False)}
    ends = stops | {tok.eos_token_id}
    rows = [
        (ids, n)
        for g, ng in zip(gens["token_ids"], gens["token_lengths"], strict=True)
        for ids, n in zip(g, ng, strict=True)
    ]
    assert sum(ids[-1] in stops for ids, _ in rows) >= 3, rows  # ~70 % of the 12 (near-uniform draws over 600)
    for ids, n in rows:
        assert not ends & set(ids[:-1]) and n == len(ids) - (ids[-1] in ends)
    for text, ids in zip(
        (t for g in gens["completions"] for t in g), (i for g in gens["token_ids"] for i in g), strict=True
    ):
        if ids[-1] in stops:  # the text keeps it too, as HF's and TRL's do (VADER scores "!")
            assert text.endswith(tok.decode(ids[-1:]))


@pytest.mark.inprocess
def test_eval_warms_its_rewards_before_sampling(tmp_path, tiny_llama, monkeypatch):
    from iama.rewards import RewardLoadError
    from iama_eval import generate as gen_mod
    from iama_eval.config import load_eval_config
    from iama_eval.run import run_eval

    def boom(*a, **k):
        raise AssertionError("a broken reward must fail before any sampling")

    monkeypatch.setattr(gen_mod, "sample_hf", boom)
    path = _config(tmp_path, {"base": str(tiny_llama)}, "hf")
    cfg = load_eval_config(str(path), rewards={"rel": {"type": "relevance", "model": str(tmp_path / "missing")}})
    with pytest.raises(RewardLoadError, match=r"reward 'rel' \(relevance\) failed to load"):
        run_eval(cfg)
