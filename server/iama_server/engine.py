"""The generation engine behind the service: one vLLM request with ``n = N`` per alignment request.

Sampling all N candidates in one request computes the prompt's KV cache once (vLLM forks it
for the N sequences). Cancelling :meth:`VLLMEngine.generate` or :meth:`VLLMEngine.stream`
(client gone, timeout) aborts the request inside vLLM, so abandoned work stops consuming the
batch.

:class:`GenerationEngine` is what the service needs of an engine; the tests' fast tier
implements it with fixed candidates (``tests/fake_engine.py``) to run the request path
in-process without vLLM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from iama.vllm_settings import vllm_engine_kwargs
from iama_server.settings import ServerSettings


@dataclass(frozen=True)
class Sampling:
    """How each of the N candidates is sampled (vLLM's ``SamplingParams`` minus ``n``)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stop: list[str] | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Generation:
    text: str
    token_count: int
    finish_reason: str | None


@dataclass(frozen=True)
class GenerationResult:
    prompt_tokens: int
    candidates: list[Generation]  # in vLLM's output index order


@dataclass(frozen=True)
class Delta:
    """A piece of one streamed completion: its new text, the tokens generated so far, and on
    the last piece the finish reason and the prompt's length."""

    text: str
    tokens: int
    finish_reason: str | None = None
    prompt_tokens: int = 0


@dataclass
class EngineStats:
    """vLLM's own view of its work, as its scheduler reports it after every step: what shows
    that an aborted request really left (its KV cache freed, its tokens no longer generated)."""

    kv_cache_usage: float = 0.0  # fraction of the KV cache in use
    generated_tokens: int = 0  # since start


def _stats_logger(stats: EngineStats) -> Any:
    """A vLLM stat-logger factory that copies the scheduler's numbers into ``stats``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0):
            if scheduler_stats is not None:
                stats.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
            if iteration_stats is not None:
                stats.generated_tokens += int(iteration_stats.num_generation_tokens)

        def log_engine_initialized(self) -> None:
            pass

    return Recorder


class GenerationEngine(Protocol):
    """What :class:`iama_server.service.AlignmentService` needs of an engine."""

    max_model_len: int
    stats: EngineStats

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def has_chat_template(self) -> bool: ...

    def unfinished_requests(self) -> int: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    async def generate(
        self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str
    ) -> GenerationResult: ...

    def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]: ...


class VLLMEngine:
    """Thin owner of ``vllm.v1.engine.async_llm.AsyncLLM`` and the model's tokenizer."""

    def __init__(self, model_path: str, settings: ServerSettings) -> None:
        self.model_path = model_path
        self.settings = settings
        self._llm: Any = None
        self.tokenizer: Any = None
        self.max_model_len: int = 0
        self.stats = EngineStats()

    def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        machine = vllm_engine_kwargs(s.kv_cache_gb, s.dtype)
        if s.enforce_eager is not None:
            machine["enforce_eager"] = s.enforce_eager
        args = AsyncEngineArgs(
            model=self.model_path,
            served_model_name=s.served_model_name,
            max_model_len=s.max_model_len,  # None: the model's own
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            seed=s.seed,
            disable_log_stats=False,  # the scheduler's stats feed EngineStats (and vLLM's periodic log line)
            **machine,
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stats_logger(self.stats)])
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def unfinished_requests(self) -> int:
        """Requests vLLM still holds: an aborted request leaves this count at once."""
        return int(self._llm.get_num_unfinished_requests()) if self._llm is not None else 0

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    async def _engine_input(self, prompt_ids: list[int]) -> Any:
        """Token ids through vLLM's renderer, the input path vLLM 0.32 supports (raw prompts
        handed to ``generate`` are deprecated there)."""
        from vllm.inputs import TokensPrompt
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self._llm.renderer
        parsed = parse_model_prompt(self._llm.model_config, TokensPrompt(prompt_token_ids=prompt_ids))
        (engine_input,) = await renderer.render_cmpl_async([parsed], renderer.default_cmpl_tok_params)
        return engine_input

    async def generate(self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str) -> GenerationResult:
        from vllm.sampling_params import RequestOutputKind

        params = _sampling_params(sampling, n, RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self._llm.generate(await self._engine_input(prompt_ids), params, request_id):
            final = out
        if final is None:
            raise RuntimeError("engine returned no output")
        outs = sorted(final.outputs, key=lambda o: o.index)
        return GenerationResult(
            prompt_tokens=len(final.prompt_token_ids or prompt_ids),
            candidates=[Generation(o.text, len(o.token_ids), o.finish_reason) for o in outs],
        )

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]:
        """One completion, text as vLLM produces it (plain generation: nothing to select)."""
        from vllm.sampling_params import RequestOutputKind

        params = _sampling_params(sampling, 1, RequestOutputKind.DELTA)
        tokens = 0  # DELTA outputs carry only the new tokens
        async for out in self._llm.generate(await self._engine_input(prompt_ids), params, request_id):
            o = out.outputs[0]
            tokens += len(o.token_ids)
            if out.finished:
                yield Delta(o.text, tokens, o.finish_reason, len(out.prompt_token_ids or prompt_ids))
            else:
                yield Delta(o.text, tokens)

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _sampling_params(sampling: Sampling, n: int, kind: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
        stop=sampling.stop,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        output_kind=kind,
    )
