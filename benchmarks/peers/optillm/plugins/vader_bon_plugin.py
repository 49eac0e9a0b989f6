"""optillm plugin: optillm 0.4.0's stock ``bon`` with the project's ``sentiment`` reward (VADER
compound) as the scorer instead of the model rating its own answers.

optillm 0.4.0 loads local plugins from ``<cwd>/optillm/plugins/*.py`` (``--plugins-dir`` is read
only after the plugins are loaded, so it has no effect): ``benchmarks/peers.py`` starts optillm
in ``benchmarks/peers/``. A request selects this plugin with the model ``vader_bon-<model>``.

The generation is a copy of ``optillm.bon.best_of_n_sampling``'s (same messages: optillm's
system prompt, empty when the request has none, and the ``User: ...`` query; one call with
``n``; temperature 1 whatever the request asks; ``max_tokens`` from the request), so the two
optillm rows differ only in the scorer. N is the server's ``--best-of-n``, as for stock ``bon``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[4]))  # the repository, for iama.rewards

SLUG = "vader_bon"  # the approach name optillm registers this plugin under
__all__ = ["SLUG", "run"]  # what optillm reads from a plugin module

_reward = None


def _sentiment(texts: list[str]) -> list[float]:
    global _reward
    if _reward is None:
        from iama.rewards import create_reward

        _reward = create_reward("sentiment")
    return [float(s) for s in _reward.score([""] * len(texts), texts)]


def run(
    system_prompt: str, initial_query: str, client: Any, model: str, request_config: dict | None = None
) -> tuple[str, int]:
    import optillm

    n = int(optillm.server_config["best_of_n"])
    max_tokens = (request_config or {}).get("max_tokens", 4096)
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": initial_query}]
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, n=n, temperature=1)
    completions = [c.message.content for c in response.choices if c.message.content is not None]
    if not completions:
        return "Error: Could not generate any completions", response.usage.completion_tokens
    scores = _sentiment(completions)
    return completions[scores.index(max(scores))], response.usage.completion_tokens
