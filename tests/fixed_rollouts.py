"""A rollout function (TRL's ``rollout_func``, the config's ``rollout_func``) that needs no
sampling: completion k of a prompt in a process's batch is a fixed function of (prompt, k).

Training on it is deterministic whatever the process layout (one process, or groups spread over
several), so the distributed-training tests can ask for equal weights."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

LENGTH = 6  # every completion the same length: any loss normalisation is layout-independent


def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    vocab = trainer.processing_class.vocab_size
    seen: Counter[str] = Counter()
    completions = []
    for p in prompts:
        key = repr(p)
        k = seen[key]
        seen[key] += 1
        digest = hashlib.blake2b(f"{key}|{k}".encode(), digest_size=2 * LENGTH).digest()
        completions.append([10 + int.from_bytes(digest[2 * i : 2 * i + 2]) % (vocab - 20) for i in range(LENGTH)])
    return {"prompt_ids": [list(x) for x in prompt_ids], "completion_ids": completions, "logprobs": None}
