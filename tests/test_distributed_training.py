"""Distributed training on the bundled accelerate configs: two gloo processes under DDP,
DeepSpeed ZeRO-2 and ZeRO-3 end with the weights one process gets (same prompts, fixed
rollouts so that sampling cannot differ), and ``--accelerate-config`` mistakes are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

IAMA = str(Path(sys.executable).with_name("iama"))
TESTS = Path(__file__).resolve().parent


def config(tmp_path: Path, tiny_llama: Path, name: str) -> Path:
    cfg = {
        "model": str(tiny_llama),
        "output_dir": str(tmp_path / name),
        "rewards": {
            "short": {"type": "length", "target": 3, "max_length": 8, "unit": "tokens"},
            "pos": {"type": "sentiment"},
        },
        "objective": {
            "tasks": [
                {"name": "short", "weights": {"short": 1.0}, "algorithm": "bon", "n": 2},
                {"name": "pos", "weights": {"pos": 1.0}, "algorithm": "soft_bon", "tau": 0.5},
            ],
            "aggregation": {"kind": "weighted", "weights": [0.5, 0.5]},
        },
        "normalization": {"enabled": False, "record": False},
        "group_size": 4,
        "prompts_per_step": 2,
        "steps": 2,
        "max_completion_length": 6,
        "learning_rate": 1e-3,
        "beta": 0.1,
        "kl_control": {"type": "fixed"},
        "tensorboard": False,
        "save_steps": 100,
        "rollout_func": "fixed_rollouts:rollout",
        "scale_rewards": "none",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([IAMA, "train", str(cfg), *extra], capture_output=True, text=True, timeout=1800, env=env)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_llama) -> dict:
    tmp = tmp_path_factory.mktemp("single")
    out = train(config(tmp, tiny_llama, "one"))
    assert out.returncode == 0, out.stderr[-3000:]
    return weights(tmp / "one")


@pytest.mark.engine
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ["cpu_ddp", "cpu_zero2", "cpu_zero3"])
def test_two_processes_end_with_one_process_weights(tmp_path, tiny_llama, single, name):
    import torch
    from safetensors.torch import load_file

    out = train(config(tmp_path, tiny_llama, name), "--accelerate-config", name)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [yaml.safe_load(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert all(r["iama/processes"] == 2 for r in rows if "loss" in r), "accelerate ran two processes"
    got = weights(tmp_path / name)
    base = load_file(next(Path(tiny_llama).glob("*.safetensors")))
    assert got.keys() == single.keys()
    moved = max(float((single[k].float() - base[k].float()).abs().max()) for k in single if k in base)
    assert moved > 1e-4, "training changed the weights (else equality would prove nothing)"
    for k in single:
        torch.testing.assert_close(got[k].float(), single[k].float(), rtol=0, atol=2e-5, msg=k)


@pytest.mark.inprocess
def test_accelerate_config_mistakes_are_one_line(tmp_path, tiny_llama):
    cfg = config(tmp_path, tiny_llama, "bad")
    out = train(cfg, "--accelerate-config", "zero9")
    assert out.returncode == 2 and "no accelerate config 'zero9'" in out.stderr and "cpu_zero3" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = train(cfg, "--accelerate-config", "cpu_zero3", "--set", "lora.enabled=true")
    assert out.returncode == 2 and "lora under DeepSpeed ZeRO-3 is not supported" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = train(cfg, "--num-processes", "2")
    assert out.returncode == 2 and "--num-processes needs --accelerate-config" in out.stderr
    bad = tmp_path / "bad_rollout.yaml"
    bad.write_text(cfg.read_text().replace("fixed_rollouts:rollout", "fixed_rollouts:nothing"))
    out = train(bad)
    assert out.returncode == 2 and "rollout_func 'fixed_rollouts:nothing' cannot be imported" in out.stderr
