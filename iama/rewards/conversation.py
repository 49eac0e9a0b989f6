"""What a reward sees of a conversation: the prompt (as text or as turns) and the completion.

Training (TRL's conversational prompts), serving (``messages`` of a request) and evaluation
hand rewards a :data:`Prompt`: a plain string or a list of chat turns. Rule-based rewards read
:func:`reward_prompt`, the last user turn; conversational rewards (a reward model with a chat
template) read the whole conversation, :func:`as_conversation`. Deriving both here keeps a
reward's view identical in training, serving and evaluation.

Datasets store conversations in two common shapes, both turned into a prompt here: OpenAI
``messages`` lists and Anthropic HH text (``"\\n\\nHuman: …\\n\\nAssistant: …"``); the final
assistant turn, the answer being rated in those datasets, is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

Message = Mapping[str, Any]  # {"role": ..., "content": ...}
Prompt = str | Sequence[Message]


def reward_prompt(prompt: Prompt) -> str:
    """The last user turn of a conversation (the request a completion answers); a plain
    string as is. A conversation with no user turn falls back to its last message."""
    if isinstance(prompt, str):
        return prompt
    users = [str(m.get("content", "")) for m in prompt if m.get("role") == "user"]
    if users:
        return users[-1]
    return str(prompt[-1].get("content", "")) if prompt else ""


def as_conversation(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat turns; a plain string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in prompt]


def flatten(prompt: Prompt) -> str:
    """Text for reward models that take (prompt, completion) pairs: a single user turn as is,
    a longer conversation in the HH layout those models were trained on."""
    turns = as_conversation(prompt)
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{names.get(t['role'], t['role'].title())}: {t['content']}" for t in turns).lstrip()


def completion_text(completion: str | Sequence[Message]) -> str:
    """A completion as text; TRL hands conversational completions as assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_prompt(text: str) -> list[dict[str, str]]:
    """An Anthropic HH transcript as the prompt it rates: its turns without the final answer."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    turns = [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns:
        raise ValueError("not an HH transcript: no 'Human:' / 'Assistant:' turns")
    return messages_prompt(turns)


def messages_prompt(messages: Sequence[Message]) -> list[dict[str, str]]:
    """A ``messages`` conversation as the prompt it rates: without its trailing assistant turn(s)."""
    turns = as_conversation(messages)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    if not turns:
        raise ValueError("a conversation needs at least one turn before the answer")
    return turns
