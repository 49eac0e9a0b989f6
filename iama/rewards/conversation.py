"""What a reward sees of a conversation: the prompt text and the completion text.

Training (TRL's conversational prompts), serving (``messages`` of a request) and evaluation
all hand rewards a plain prompt string. Deriving it in one place keeps a reward's view of
"the prompt" identical in all three, so a model is served with the rewards it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Message = Mapping[str, Any]  # {"role": ..., "content": ...}


def reward_prompt(prompt: str | Sequence[Message]) -> str:
    """The last user turn of a conversation (the request a completion answers); a plain
    string as is. A conversation with no user turn falls back to its last message."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content", "")) for m in prompt if m.get("role") == "user"]
    if users:
        return users[-1]
    return str(prompt[-1].get("content", "")) if prompt else ""


def completion_text(completion: str | Sequence[Message]) -> str:
    """A completion as text; TRL hands conversational completions as assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
