"""The embedded default model: prepared once, atomically, loadable by transformers."""

import json
import os
from pathlib import Path

import pytest

from iama import models


@pytest.fixture(scope="session")
def default_model() -> Path:
    return models.prepare_default_model()


@pytest.mark.slow
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


@pytest.mark.slow
def test_second_call_reuses_cache(default_model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not convert again")

    monkeypatch.setattr(models, "_convert_gguf", boom)
    assert models.prepare_default_model() == default_model
    assert models.resolve_model(None) == str(default_model)
    assert models.resolve_model("default") == str(default_model)


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


def test_resolve_passes_paths_and_hub_ids_through(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("IAMA_CACHE_DIR", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IAMA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x" / "iama"


def test_vllm_cpu_cache_size_defaults_but_respects_explicit_settings(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    models.configure_vllm_cpu()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    models.configure_vllm_cpu()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    models.configure_vllm_cpu(0.5)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "0.5"
    # every engine builder goes through vllm_engine_kwargs, which applies it
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    models.vllm_engine_kwargs()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"
