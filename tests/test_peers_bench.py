"""The peers benchmark's bookkeeping (``benchmarks/peers.py``), without running a peer: its
schedule, what a resume still has to run (``--max-n`` caps included), the refusal to resume under
other settings (another CPU), and the README's table from a raw file. The measurements
themselves are a benchmark, not a test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peers

pytestmark = pytest.mark.inprocess

ARMS = ["iama_bon", "iama_er", "its_hub_bon", "vllm_n"]


def config(**over: object) -> dict:
    base = {
        "machine": {"cpu": "AMD EPYC", "cores": 2, "isa": ["avx2"]},
        "model": "default", "dtype": "float32", "max_model_len": 2048, "prompts_sha256": "x", "prompts_used": 32,
        "repeats": 1, "n": [4, 8], "concurrency": [1, 4], "max_tokens": 64, "temperature": 1.0,
        "reward": "sentiment", "early_rejection_defaults": {}, "arm_order": ARMS, "max_n": None, "iama_env": None,
    }  # fmt: skip
    return {**base, **over}


def test_engines_alternate_per_n_and_the_peers_order_rotates():
    phases = peers.schedule([4, 8, 16], ARMS)
    assert [(p["engine"], p["n"], p["start"]) for p in phases] == [
        ("iama", 4, True), ("vllm", 4, True), ("vllm", 8, False), ("iama", 8, True), ("iama", 16, False),
        ("vllm", 16, True),
    ]  # fmt: skip
    assert [p["arms"] for p in phases if p["engine"] == "vllm"] == [
        ["its_hub_bon", "vllm_n"], ["vllm_n", "its_hub_bon"], ["its_hub_bon", "vllm_n"],
    ]  # fmt: skip


def test_a_resume_runs_only_what_is_missing_and_never_a_capped_cell():
    cfg = config(max_n={"its_hub_bon": 4})
    phases = peers.schedule(cfg["n"], ARMS)
    done = {("iama_bon", 4, 1), ("iama_bon", 4, 4), ("iama_er", 4, 1)}
    todo = peers.pending_phases(phases, cfg, cfg["concurrency"], done)
    assert [(p["engine"], p["n"], p["work"]) for p in todo] == [
        ("iama", 4, [("iama_er", 4)]),
        ("vllm", 4, [("its_hub_bon", 1), ("its_hub_bon", 4), ("vllm_n", 1), ("vllm_n", 4)]),
        ("vllm", 8, [("vllm_n", 1), ("vllm_n", 4)]),  # its_hub_bon stops at N = 4
        ("iama", 8, [("iama_er", 1), ("iama_er", 4), ("iama_bon", 1), ("iama_bon", 4)]),
    ]
    runs = [{"arm": a, "n": n, "concurrency": c} for a, n, c in done]
    p = peers.progress({"config": cfg, "runs": runs})
    assert (p["done"], p["total"], p["complete"]) == (3, 14, False)  # 16 cells less its_hub_bon's 2 at N = 8
    assert ["its_hub_bon", 8, 1] not in p["missing"]


def test_a_resume_on_another_cpu_or_with_other_settings_is_refused_in_one_line(tmp_path: Path):
    out = tmp_path / "peers.json"
    out.write_text(json.dumps({"config": config(), "runs": []}))
    assert peers.load_previous(out, config(), fresh=False, resume=False)["runs"] == []
    amx = config(machine={"cpu": "Intel Xeon", "cores": 2, "isa": ["amx_bf16", "avx2", "avx512f"]}, dtype="bfloat16")
    with pytest.raises(SystemExit) as refused:
        peers.load_previous(out, amx, fresh=False, resume=False)
    message = str(refused.value)
    assert "\n" not in message and "machine" in message and "dtype 'float32' -> 'bfloat16'" in message
    with pytest.raises(SystemExit, match="max_n"):
        peers.load_previous(out, config(max_n={"vllm_n": 4}), fresh=False, resume=False)
    assert peers.load_previous(out, amx, fresh=True, resume=False) is None  # --fresh: the old file kept aside
    assert (tmp_path / "peers.json.bak").exists() and not out.exists()


def test_the_table_gives_each_cells_ratios_to_iama_bon():
    def run(arm: str, p50: float, rps: float) -> dict:
        summary = {
            "latency_p50_s": p50, "latency_p95_s": 2 * p50, "requests_per_s": rps, "reward_mean": 0.5,
            "reward_ci95": [0.4, 0.6], "backend_requests_per_request": 4.0, "prompt_tokens_per_request": 164.0,
            "generation_tokens_per_request": 170.0,
        }  # fmt: skip
        return {"arm": arm, "n": 4, "concurrency": 1, "summary": summary}

    lines = peers.table({"runs": [run("vllm_n", 3.0, 0.5), run("iama_bon", 4.0, 0.25)]}).splitlines()
    assert len(lines) == 4 and lines[1].count("---") == lines[0].count("|") - 1
    assert lines[2].startswith("| 4 | 1 | iama_bon | 4.00 | 1.00 |")
    assert lines[3].startswith("| 4 | 1 | vllm_n | 3.00 | 0.75 | 6.00 | 0.500 | 2.00 | 0.500 [0.400, 0.600] |")
