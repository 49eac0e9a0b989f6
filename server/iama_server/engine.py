"""What the service needs of a generation engine, and the values that cross that boundary.

:class:`GenerationEngine` is a Protocol: ``vllm_engine.VLLMEngine`` implements it on vLLM, the
tests' fast tier with fixed candidates (``tests/fake_engine.py``), so the request path runs
in-process without vLLM. Rendering and the searches read these value types without importing
vLLM. ``generate`` samples N candidates in one request; ``stream`` yields one completion as it
is produced; ``next_token_logprobs`` reads one step of many prompts (a rubric judge's rating).
Cancelling any of them (client gone, timeout) must abort the request inside the engine. A
request may run through a LoRA :class:`Adapter` on the served base (``Sampling.adapter``);
``add_adapter`` / ``remove_adapter`` load and drop one at run time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StructuredOutput:
    """Constrain every candidate to JSON (vLLM's structured outputs): to ``json_schema`` when
    given, else to any JSON object. Best-of-N then chooses among valid answers only."""

    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter on the served base, as the engine knows it (vLLM's ``LoRARequest``)."""

    name: str  # what requests send as ``model``
    id: int  # >= 1, never reused within a server's life (vLLM's lora_int_id)
    path: str  # the adapter's directory (adapter_config.json + weights)


@dataclass(frozen=True)
class Sampling:
    """How each of the N candidates is sampled (vLLM's ``SamplingParams`` minus ``n``).

    ``logprobs``: return each generated token's log-probability and the ``logprobs`` most likely
    alternatives (0: the token's own only); ``prompt_logprobs`` the same for the prompt's tokens.
    ``priority``: vLLM's scheduling priority (lower is scheduled first; the request key's class,
    ``keys.PRIORITIES``), honoured when the engine runs ``scheduling_policy: priority``.
    ``adapter``: the LoRA adapter the request runs through (``None``: the base model).
    """

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stop: list[str] | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured: StructuredOutput | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    priority: int = 0
    adapter: Adapter | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One position's token and its log-probability under the model (before temperature or
    top-p: vLLM's raw log-probs), with the most likely tokens there, best first."""

    token_id: int
    token: str
    logprob: float | None  # None for the prompt's first token, which nothing predicts
    top: tuple[tuple[str, float], ...] = ()


Logprobs = tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Generation:
    text: str
    token_count: int
    finish_reason: str | None
    logprobs: Logprobs | None = None  # when the sampling asked for them


@dataclass(frozen=True)
class GenerationResult:
    prompt_tokens: int
    candidates: list[Generation]  # in vLLM's output index order
    prompt_logprobs: Logprobs | None = None  # when the sampling asked for them


@dataclass(frozen=True)
class Delta:
    """A piece of one streamed completion: its new text, the tokens generated so far, and on
    the last piece the finish reason and the prompt's length. With log-probs asked for, the
    new tokens' (``logprobs``) and, on the first piece, the prompt's."""

    text: str
    tokens: int
    finish_reason: str | None = None
    prompt_tokens: int = 0
    logprobs: Logprobs = ()
    prompt_logprobs: Logprobs | None = None


class InvalidEngineInput(Exception):
    """The engine refused a request as the client's mistake (an invalid JSON schema, say): a
    400, not a server error. ``param`` is the request field it names, when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class EngineStats:
    """vLLM's own view of its work, as its scheduler reports it after every step: what shows
    that an aborted request really left (its KV cache freed, its tokens no longer generated)."""

    kv_cache_usage: float = 0.0  # fraction of the KV cache in use
    generated_tokens: int = 0  # since start


class GenerationEngine(Protocol):
    """What the call builder (``calls.py``: encoding, limits) and the service (``service.py``:
    generation) need of an engine."""

    max_model_len: int
    vocab_size: int
    stats: EngineStats

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def has_chat_template(self) -> bool: ...

    def unfinished_requests(self) -> int: ...

    def prometheus_exposition(self) -> bytes:
        """The engine's own metrics in Prometheus' text format (empty when it keeps none)."""
        ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    async def generate(
        self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str
    ) -> GenerationResult: ...

    def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncGenerator[Delta, None]: ...

    async def next_token_logprobs(
        self,
        prompts: list[list[int]],
        token_ids: list[int],
        request_id: str,
        priority: int = 0,
        adapter: Adapter | None = None,
    ) -> list[dict[int, float]]:
        """The log-probs of ``token_ids`` at each prompt's next token, all prompts in one round
        (what a rubric judge reads: ``judging.py``), through ``adapter`` when given."""
        ...

    async def add_adapter(self, adapter: Adapter) -> None:
        """Load a LoRA adapter so that requests may run through it (the engine was started
        with LoRA enabled)."""
        ...

    async def remove_adapter(self, adapter: Adapter) -> None:
        """Drop a loaded adapter; no request runs through it any more."""
        ...
