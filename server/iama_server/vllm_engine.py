"""The engine on vLLM: a thin owner of ``AsyncLLM`` and the model's tokenizer
(:class:`~iama_server.engine.GenerationEngine`).

Best-of-N sends one vLLM request with ``n = N``: the prompt's KV cache is computed once and
forked for the N sequences. Cancelling :meth:`VLLMEngine.generate` or :meth:`VLLMEngine.stream`
(client gone, timeout) aborts the request inside vLLM, so abandoned work stops consuming the
batch. With LoRA enabled (``adapters.LoraLimits``) a request's ``Sampling.adapter`` becomes its
``LoRARequest``: vLLM batches requests through different adapters on the one base. vLLM's own
views (token log-probs, scheduler stats, client errors) become the engine's value types here
and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

from iama.vllm_settings import vllm_engine_kwargs
from iama_server.adapters import LoraLimits
from iama_server.engine import (
    Adapter,
    Delta,
    EngineStats,
    Generation,
    GenerationResult,
    InvalidEngineInput,
    Logprobs,
    Sampling,
    TokenLogprob,
)
from iama_server.settings import ServerSettings

# The floor OpenAI's and vLLM's servers report for a log-probability of -inf (JSON has no -inf).
LOGPROB_FLOOR = -9999.0


def finite_logprob(x: float) -> float:
    return x if math.isfinite(x) else LOGPROB_FLOOR


def token_logprobs(token_ids: list[int], positions: list[Any], k: int, unscored: str = "") -> Logprobs:
    """vLLM's per-position ``{token_id: Logprob}`` maps (the position's own token plus the top
    ``k``) as :class:`TokenLogprob` s. A ``None`` position (the prompt's first) has no score;
    ``unscored`` is its token's text."""
    out = []
    for tid, entry in zip(token_ids, positions, strict=True):
        if entry is None:
            out.append(TokenLogprob(tid, unscored, None))
            continue
        own = entry[tid]
        ranked = sorted(entry.values(), key=lambda lp: lp.rank if lp.rank is not None else math.inf)
        top = tuple((lp.decoded_token or "", finite_logprob(lp.logprob)) for lp in ranked[:k])
        out.append(TokenLogprob(tid, own.decoded_token or "", finite_logprob(own.logprob), top))
    return tuple(out)


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


class VLLMEngine:
    """Thin owner of ``vllm.v1.engine.async_llm.AsyncLLM`` and the model's tokenizer."""

    def __init__(self, model_path: str, settings: ServerSettings, lora: LoraLimits | None = None) -> None:
        self.model_path = model_path
        self.settings = settings
        self.lora = lora  # None: started without LoRA
        self._llm: Any = None
        self.tokenizer: Any = None
        self.max_model_len: int = 0
        self.vocab_size: int = 0
        self.stats = EngineStats()

    def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        machine = vllm_engine_kwargs(s.kv_cache_gb, s.dtype)
        if s.enforce_eager is not None:
            machine["enforce_eager"] = s.enforce_eager
        if self.lora is not None:
            machine |= {
                "enable_lora": True,
                "max_loras": self.lora.max_loras,
                "max_lora_rank": self.lora.max_lora_rank,
                "max_cpu_loras": self.lora.max_cpu_loras,
            }
        args = AsyncEngineArgs(
            model=self.model_path,
            served_model_name=s.served_model_name,
            max_model_len=s.max_model_len,  # None: the model's own
            tensor_parallel_size=s.tensor_parallel_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            seed=s.seed,
            scheduling_policy=s.scheduling_policy,  # "priority": a key's class runs first (vLLM's priority)
            disable_log_stats=False,  # the scheduler's stats feed EngineStats (and vLLM's periodic log line)
            **machine,
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stats_logger(self.stats)])
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.vocab_size = int(self._llm.model_config.get_vocab_size())

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def unfinished_requests(self) -> int:
        """Requests vLLM still holds: an aborted request leaves this count at once."""
        return int(self._llm.get_num_unfinished_requests()) if self._llm is not None else 0

    def prometheus_exposition(self) -> bytes:
        """vLLM's own metrics (``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
        prefix-cache hits, time to first token, inter-token latency, preemptions, …): its
        ``PrometheusStatLogger`` records them into prometheus_client's global registry, the one
        ``vllm serve`` exposes. Served beside iama's own, autoscalers (KEDA, HPA) and LLM-aware
        gateways read the names they know without an adapter."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY) if self._llm is not None else b""

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids))

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

        final = None
        with _client_errors(sampling):
            params = _sampling_params(sampling, n, RequestOutputKind.FINAL_ONLY)
            engine_input = await self._engine_input(prompt_ids)
            async for out in self._llm.generate(
                engine_input, params, request_id, priority=sampling.priority, lora_request=_lora(sampling.adapter)
            ):
                final = out
        if final is None:
            raise RuntimeError("engine returned no output")
        outs = sorted(final.outputs, key=lambda o: o.index)
        k = sampling.logprobs
        return GenerationResult(
            prompt_tokens=len(final.prompt_token_ids or prompt_ids),
            candidates=[
                Generation(
                    o.text,
                    len(o.token_ids),
                    o.finish_reason,
                    None if k is None else token_logprobs(list(o.token_ids), list(o.logprobs or []), k),
                )
                for o in outs
            ],
            prompt_logprobs=self._prompt_logprobs(final, prompt_ids, sampling),
        )

    async def next_token_logprobs(
        self,
        prompts: list[list[int]],
        token_ids: list[int],
        request_id: str,
        priority: int = 0,
        adapter: Adapter | None = None,
    ) -> list[dict[int, float]]:
        """One step of every prompt, submitted together (the scheduler runs them in one batch):
        the full-vocabulary log-probs of ``token_ids`` at the next token (vLLM's
        ``logprob_token_ids``: exact, not limited to a top-k)."""
        from vllm import SamplingParams
        from vllm.entrypoints.generate.label_reads import next_token_label_reads
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=token_ids, output_kind=RequestOutputKind.FINAL_ONLY
        )
        with _client_errors(None):
            inputs = [await self._engine_input(p) for p in prompts]
            reads = await next_token_label_reads(
                self._llm, inputs, [params] * len(prompts), request_id, priority=priority, lora_request=_lora(adapter)
            )
        return [dict(zip(token_ids, read.logprobs, strict=True)) for read in reads]

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncGenerator[Delta, None]:
        """One completion, text as vLLM produces it (plain generation: nothing to select)."""
        from vllm.sampling_params import RequestOutputKind

        tokens = 0  # DELTA outputs carry only the new tokens
        k = sampling.logprobs
        first = True
        with _client_errors(sampling):
            params = _sampling_params(sampling, 1, RequestOutputKind.DELTA)
            engine_input = await self._engine_input(prompt_ids)
            async for out in self._llm.generate(
                engine_input, params, request_id, priority=sampling.priority, lora_request=_lora(sampling.adapter)
            ):
                o = out.outputs[0]
                tokens += len(o.token_ids)
                lps = () if k is None else token_logprobs(list(o.token_ids), list(o.logprobs or []), k)
                prompt_lps = self._prompt_logprobs(out, prompt_ids, sampling) if first else None
                first = False
                prompt_tokens = len(out.prompt_token_ids or prompt_ids)
                finish = o.finish_reason if out.finished else None
                yield Delta(o.text, tokens, finish, prompt_tokens if out.finished else 0, lps, prompt_lps)

    def _prompt_logprobs(self, out: Any, prompt_ids: list[int], sampling: Sampling) -> Logprobs | None:
        if sampling.prompt_logprobs is None or out.prompt_logprobs is None:
            return None
        ids = list(out.prompt_token_ids or prompt_ids)
        first = self.decode(ids[:1])
        return token_logprobs(ids, list(out.prompt_logprobs), sampling.prompt_logprobs, first)

    async def add_adapter(self, adapter: Adapter) -> None:
        """Load the adapter's weights now (vLLM checks them against the base), not on the
        first request that names it."""
        if not await self._llm.add_lora(_lora(adapter)):
            raise RuntimeError(f"vLLM did not load adapter {adapter.name!r}")

    async def remove_adapter(self, adapter: Adapter) -> None:
        await self._llm.remove_lora(adapter.id)

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _lora(adapter: Adapter | None) -> Any:
    """vLLM's ``LoRARequest`` for an adapter (its name and id, and the path vLLM loads from)."""
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.id, adapter.path)


@contextmanager
def _client_errors(sampling: Sampling | None) -> Iterator[None]:
    """vLLM's verdict that a request is the client's mistake, as :class:`InvalidEngineInput`."""
    from vllm.exceptions import VLLMClientError

    try:
        yield
    except VLLMClientError as exc:
        param = getattr(exc, "parameter", None)
        if param is None and sampling is not None and sampling.structured is not None:
            param = "response_format"
        message = str(exc.args[0]) if exc.args else str(exc)
        raise InvalidEngineInput(message, param) from None


def _sampling_params(sampling: Sampling, n: int, kind: Any) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    structured = None
    if sampling.structured is not None:
        schema = sampling.structured.json_schema
        structured = (
            StructuredOutputsParams(json=schema) if schema is not None else StructuredOutputsParams(json_object=True)
        )
    return SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
        stop=sampling.stop,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        logprobs=sampling.logprobs,
        prompt_logprobs=sampling.prompt_logprobs,
        structured_outputs=structured,
        ignore_eos=sampling.ignore_eos,
        stop_token_ids=sampling.stop_token_ids,
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        output_kind=kind,
    )
