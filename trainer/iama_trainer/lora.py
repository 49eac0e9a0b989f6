"""Merging a saved LoRA adapter into its base model, so that vLLM can serve it as one checkpoint.

A run trained with ``lora.merge: false`` saves only the adapter (plus tokenizer and iama.json);
the base it was trained on is the adapter config's ``base_model_name_or_path``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from iama.files import make_readable
from iama.modelcard import CARD_FILE


def merge_adapter(adapter: Path, output: Path) -> Path:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{adapter} has no adapter_config.json: not a LoRA adapter directory")
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty")
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} does not name its base model (base_model_name_or_path)")
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype=torch.float32).merge_and_unload()
    tmp = output.parent / f".{output.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp)
    if (adapter / CARD_FILE).is_file():
        shutil.copy2(adapter / CARD_FILE, tmp / CARD_FILE)
    make_readable(tmp)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(tmp, output)
    return output
