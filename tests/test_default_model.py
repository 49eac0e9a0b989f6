"""The embedded default model: prepared once, atomically, loadable by transformers."""

import json
import os
from pathlib import Path

import pytest

from iama import models


@pytest.fixture(scope="session")
def default_model() -> Path:
    return models.prepare_default_model()


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_default_model_is_a_dense_bf16_checkpoint(default_model):
    cfg = json.loads((default_model / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["dtype"] == "bfloat16"
    assert (default_model / "model.safetensors").is_file()
    assert (default_model / "iama-prepared.json").is_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model)
    assert model.dtype == torch.bfloat16
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text  # the dequantised weights are the real model, not noise


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_second_call_reuses_cache(default_model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not convert again")

    monkeypatch.setattr(models, "_convert_gguf", boom)
    assert models.prepare_default_model() == default_model
    assert models.resolve_model(None) == str(default_model)
    assert models.resolve_model("default") == str(default_model)


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_the_prepared_default_model_is_readable_by_other_users(default_model):
    import stat

    assert stat.S_IMODE(default_model.stat().st_mode) & 0o055 == 0o055  # not mkdtemp's 0700
    for f in default_model.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f


@pytest.mark.inprocess
def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("IAMA_CACHE_DIR", str(tmp_path))

    def half_write(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(models, "_convert_gguf", half_write)
    with pytest.raises(RuntimeError, match="killed"):
        models.prepare_default_model()
    target = models.default_model_dir()
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.inprocess
def test_incomplete_cache_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("IAMA_CACHE_DIR", str(tmp_path))
    target = models.default_model_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no completion marker: a crashed older layout

    def fake_convert(gguf, out):
        (out / "config.json").write_text('{"ok": true}')

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    messages = []
    assert models.prepare_default_model(progress=messages.append) == target
    assert json.loads((target / "config.json").read_text()) == {"ok": True}
    assert any("preparing" in m for m in messages)


@pytest.mark.inprocess
def test_resolve_passes_model_dirs_and_hub_ids_through(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotFound, match="HF_HUB_OFFLINE=1 forbids fetching it"):
        models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")


@pytest.mark.inprocess
def test_what_cannot_be_served_says_why_and_what_to_give_instead(tmp_path):
    with pytest.raises(models.ModelNotFound, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(models.ModelNotFound, match="does not exist"):
        models.resolve_model("runs/length/model")  # a relative path, not a hub id
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    with pytest.raises(models.ModelNotFound, match=r"is a training run directory; serve its model: '.*run/model'"):
        models.resolve_model(str(run))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    with pytest.raises(models.ModelNotFound, match=r"holds a LoRA adapter.*iama merge-lora"):
        models.resolve_model(str(lora))
    (tmp_path / "weights.gguf").write_text("x")
    with pytest.raises(models.ModelNotFound, match="is a file"):
        models.resolve_model(str(tmp_path / "weights.gguf"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(models.ModelNotFound, match=r"no config\.json"):
        models.resolve_model(str(empty))


@pytest.mark.inprocess
def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("IAMA_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IAMA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x" / "iama"


@pytest.mark.inprocess
def test_vllm_cpu_cache_size_defaults_but_respects_explicit_settings(monkeypatch):
    from iama import vllm_settings

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    vllm_settings.configure_vllm_cpu()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    vllm_settings.configure_vllm_cpu()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    vllm_settings.configure_vllm_cpu(3)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    # every engine builder goes through vllm_engine_kwargs, which applies it
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    kwargs = vllm_settings.vllm_engine_kwargs()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert kwargs["enable_chunked_prefill"] is False and kwargs["enforce_eager"] is True  # CPU
    assert kwargs["dtype"] == vllm_settings.choose_dtype().dtype
    assert vllm_settings.vllm_engine_kwargs(dtype="bfloat16")["dtype"] == "bfloat16"  # explicit wins


@pytest.mark.inprocess
@pytest.mark.parametrize("value", [0.5, 0])
def test_kv_cache_size_is_whole_gib(value):
    """vllm-cpu parses VLLM_CPU_KVCACHE_SPACE with int(): "0.5" would kill the engine at start-up
    with a pydantic error from deep inside vLLM, so the setting refuses it up front, by name."""
    from pydantic import ValidationError

    from iama_server.settings import ServerSettings

    with pytest.raises(ValidationError, match="kv_cache_gb"):
        ServerSettings(kv_cache_gb=value)
