"""``hf:<path-or-hub-id>``: any Hugging Face sequence-classification model as a reward.

Loading goes through ``from_pretrained`` so users with a hub get hub ids for free; here (no
hub) it is exercised with a locally built model. Scoring is batched and runs under
``torch.inference_mode`` on the chosen device.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iama._arrays import FloatArray
from iama.dtypes import Dtype, choose_dtype
from iama.rewards.base import register_prefix
from iama.rewards.conversation import Prompt, as_conversation, flatten


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class HFRewardModel:
    """Reward = one logit of a sequence-classification head, on the whole conversation.

    * ``label``: which output to read (index or label name, e.g. ``"POSITIVE"``); defaults to 0
      for single-output reward models and to the last label otherwise.
    * ``chat_template``: render the conversation plus the completion (as the assistant's turn)
      with the reward model's own chat template, as chat reward models are trained; ``None``
      (the default) does so whenever the RM's tokenizer has a template.
    * ``pair``: otherwise feed (prompt, completion) as a text pair, the convention of older
      open RMs; a multi-turn prompt is written out in the HH layout. ``False`` scores the
      completion alone (e.g. a sentiment classifier), whatever the template.
    * ``probability``: return softmax probability of ``label`` instead of the logit.
    """

    path: str
    label: int | str | None = None
    pair: bool = True
    chat_template: bool | None = None
    probability: bool = False
    batch_size: int = 16
    max_length: int = 512
    device: str | None = None
    dtype: Dtype = "auto"  # auto: iama.dtypes (fp32 on a CPU without native bf16)
    name: str = field(init=False)
    description: str = field(init=False)
    conversational: bool = field(default=True, init=False)  # RewardSet passes chat turns
    judges_partial_text: bool = field(default=True, init=False)  # a preference model rates any text
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _tok: Any = field(default=None, init=False, repr=False)
    _index: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"hf:{self.path}"
        self.description = f"Hugging Face sequence-classification reward model {self.path}"
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError("batch_size and max_length must be >= 1")
        self._load()

    @property
    def params(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "pair": self.pair,
            "chat_template": self.chat_template,
            "probability": self.probability,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
        }

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self.device or default_device()
        dtype = choose_dtype(self.dtype, cuda=device.startswith("cuda"))
        tok = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=getattr(torch, dtype.dtype))
        model.to(device).eval()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        model.config.pad_token_id = tok.pad_token_id
        n = model.config.num_labels
        if self.label is None:
            idx = 0 if n == 1 else n - 1
        elif isinstance(self.label, int):
            idx = self.label
        else:
            label2id = {str(k).lower(): int(v) for k, v in (model.config.label2id or {}).items()}
            if self.label.lower() not in label2id:
                raise ValueError(f"label {self.label!r} not in model labels {sorted(label2id)}")
            idx = label2id[self.label.lower()]
        if not 0 <= idx < n:
            raise ValueError(f"label index {idx} out of range for {n} labels")
        self._model, self._tok, self._index, self.device = model, tok, idx, device
        if self.chat_template is None:
            self.chat_template = self.pair and bool(getattr(tok, "chat_template", None))

    def _encode(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> Any:
        tok = self._tok
        kw = {"padding": True, "truncation": True, "max_length": self.max_length, "return_tensors": "pt"}
        if not self.pair:
            return tok(list(completions), **kw)
        if self.chat_template:
            texts = [
                tok.apply_chat_template([*as_conversation(p), {"role": "assistant", "content": c}], tokenize=False)
                for p, c in zip(prompts, completions, strict=True)
            ]
            return tok(texts, **kw)
        return tok([flatten(p) for p in prompts], list(completions), **kw)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> FloatArray:
        import torch

        if len(prompts) != len(completions):
            raise ValueError("need one prompt per completion")
        out: list[np.ndarray] = []
        # One forward at a time: the model is shared by the server's concurrent requests.
        with self._lock, torch.inference_mode():
            for s in range(0, len(completions), self.batch_size):
                enc = self._encode(prompts[s : s + self.batch_size], completions[s : s + self.batch_size])
                logits = self._model(**enc.to(self.device)).logits.float()
                vals = torch.softmax(logits, -1)[:, self._index] if self.probability else logits[:, self._index]
                out.append(vals.cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@register_prefix("hf")
def _hf_factory(path: str, **params: Any) -> HFRewardModel:
    return HFRewardModel(path=path, **params)
