"""The shared YAML loader and validation messages of the trainer, eval and server configs."""

from __future__ import annotations

import pytest

from iama.configfile import ConfigError, read_yaml

pytestmark = pytest.mark.inprocess


def test_read_yaml_errors_name_the_file_and_the_place(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML at line \d+, column \d+"):
        read_yaml(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_yaml(f)
    with pytest.raises(ConfigError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml")
    f.write_text("")
    assert read_yaml(f) == {}


def test_train_config_errors_are_one_line_naming_each_key(tmp_path):
    from iama_trainer.config import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("rewards: {a: length}\nobjective: {tasks: [{weights: {a: 1}}]}\ngroup_size: 1\nlernrate: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    msg = str(err.value)
    assert "\n" not in msg and "group_size:" in msg and "lernrate: Extra inputs are not permitted" in msg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective.tasks.5.n", r"--set objective\.tasks\.5\.n: objective\.tasks\.5 is not an item of a list of 2"),
        ("steps.foo", r"--set steps\.foo: steps is a value, not a section"),
        ("objective.tasks.x.n", r"objective\.tasks\.x is not an item"),
    ],
)
def test_bad_set_paths_are_config_errors(override, message):
    from iama_trainer.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config("length", {override: 2})


def test_server_settings_errors_name_where_the_value_came_from(tmp_path, monkeypatch):
    from iama_server.settings import ServerSettings

    f = tmp_path / "server.yaml"
    f.write_text("max_budget: 0\n")
    with pytest.raises(ConfigError, match=rf"{f}: max_budget: Input should be greater than or equal to 1"):
        ServerSettings.load(f)
    monkeypatch.setenv("IAMA_MAX_TOKENS", "lots")
    with pytest.raises(ConfigError, match="IAMA_MAX_TOKENS: Input should be a valid integer"):
        ServerSettings.load(None)
    monkeypatch.delenv("IAMA_MAX_TOKENS")
    with pytest.raises(ConfigError, match="--max-budget: Input should be less than or equal to 256"):
        ServerSettings.load(None, max_budget=1000)
    with pytest.raises(ConfigError, match=r"default_max_tokens \(128\) must be <= max_tokens \(64\)"):
        ServerSettings.load(None, max_tokens=64)
