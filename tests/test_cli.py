"""The ``iama`` console script, run as a user would run it."""

import json
import subprocess
import sys
from pathlib import Path

IAMA = Path(sys.executable).with_name("iama")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IAMA), *args], capture_output=True, text=True, timeout=120)


def test_help_and_rewards():
    out = run("--help")
    assert out.returncode == 0 and "prepare-model" in out.stdout
    rewards = json.loads(run("rewards").stdout)
    assert "sentiment" in rewards and "length" in rewards


def test_prepare_model_prints_the_cached_path():
    out = run("prepare-model")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file()
