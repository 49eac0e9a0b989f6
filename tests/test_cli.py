"""The ``iama`` console script, run as a user would run it: every error a user can fix is one
line on stderr, ``iama <command>: ...``, with no traceback (exit 2: usage/config, 1: run time)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iama import __version__

IAMA = Path(sys.executable).with_name("iama")


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IAMA), *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.inprocess
def test_help_version_and_rewards():
    out = run("--help")
    assert out.returncode == 0 and "prepare-model" in out.stdout
    assert run("--version").stdout.strip() == f"iama {__version__}"
    rewards = json.loads(run("rewards").stdout)
    assert "sentiment" in rewards and "length" in rewards


@pytest.mark.engine  # on a cold cache this converts the default model (minutes)
@pytest.mark.timeout(3600)
def test_prepare_model_prints_the_cached_path():
    out = run("prepare-model")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert (path / "config.json").is_file()


@pytest.mark.inprocess
def test_usage_errors_are_one_line():
    line = one_line_error(run("serve", "--log-level", "verbose"), 2)
    assert line == (
        "iama serve: Invalid value for '--log-level': 'verbose' is not one of "
        "'critical', 'error', 'warning', 'info', 'debug'."
    )
    assert one_line_error(run("no-such-command"), 2) == "iama: No such command 'no-such-command'."
    assert one_line_error(run("eval", "--budgets", "1,a"), 2) == (
        "iama eval: --budgets: expected comma-separated whole numbers such as 1,2,4,8, got '1,a'"
    )


@pytest.mark.inprocess
def test_train_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rewards: {a: length\nobjective: x\n")
    assert one_line_error(run("train", str(bad)), 2).startswith(f"iama train: {bad}: not valid YAML at line")
    line = one_line_error(run("train", "length", "--set", "objective.tasks.5.n=2"), 2)
    assert line == "iama train: --set objective.tasks.5.n: objective.tasks.5 is not an item of a list of 2"
    line = one_line_error(run("train", "length", "--set", "steps.foo=1"), 2)
    assert line == "iama train: --set steps.foo: steps is a value, not a section"
    line = one_line_error(run("train", "length", "--set", "group_size=1"), 2)
    assert "group_size: Input should be greater than or equal to 2" in line
    bad.write_text("rewards: {a: length}\nobjective: {tasks: [{weights: {b: 1}}]}\n")
    assert "unknown reward" in one_line_error(run("train", str(bad)), 2)


@pytest.mark.engine
def test_train_with_a_missing_model_is_one_line(tmp_path):
    out = run("train", "length", "--set", f"model={tmp_path}/no-model", "--output-dir", str(tmp_path / "run"))
    expected = f"iama train: model '{tmp_path}/no-model' does not exist (not a local directory, and not a hub id)"
    assert one_line_error(out, 1) == expected


@pytest.mark.inprocess
def test_train_refuses_an_existing_output_dir(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    line = one_line_error(run("train", "length", "--output-dir", str(tmp_path / "run")), 1)
    assert "--resume" in line and "--overwrite" in line


@pytest.mark.inprocess
def test_eval_errors_are_one_line(tmp_path, tiny_llama):
    line = one_line_error(run("eval", "--model", f"plain={tiny_llama}", "--output-dir", str(tmp_path)), 1)
    assert line == "iama eval: no rewards to evaluate with: no model has an iama.json; set `rewards:` in the config"
    line = one_line_error(run("eval", "--model", "x"), 2)
    assert line == "iama eval: --model: expected LABEL=PATH, got 'x'"
