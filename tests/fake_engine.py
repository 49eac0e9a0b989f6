"""A hand-written :class:`iama_server.engine.GenerationEngine` with fixed candidates.

It lets the whole request path (routes, validation, admission, scoring, selection, rendering)
run in-process in milliseconds, without vLLM. Behaviour that needs time is built in, not
raced: ``hold()`` keeps every generation waiting until ``release()``, so a timeout or a
disconnect happens *by construction*, and cancellations are recorded as aborts.

Adapters: ``add_adapter`` / ``remove_adapter`` record what is loaded (``adapters``); a request
through an adapter (``Sampling.adapter``) gets the candidates in reverse order, so a test sees
which model generated, and ``judged_with`` records the adapter of each judge round.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncGenerator

from iama_server.engine import (
    Adapter,
    Delta,
    EngineStats,
    Generation,
    GenerationResult,
    Logprobs,
    Sampling,
    TokenLogprob,
)

CANDIDATES = [
    "I love this wonderful day, it is great.",
    "This is terrible and sad.",
    "Fine.",
    "A calm, neutral statement about the weather today and tomorrow.",
    "Happy happy joy, what a lovely and beautiful morning!",
    "Awful, broken, horrible.",
    "Ok.",
    "Numbers: one two three four five six seven eight nine ten.",
]


def _word_id(word: str) -> int:
    return zlib.crc32(word.encode()) % 1000


def _logprob(token_id: int) -> float:
    return -0.5 - (token_id % 7) * 0.25


def _scored(tokens: list[str], k: int) -> Logprobs:
    """Each token its own most likely choice, followed by ``k - 1`` made-up alternatives."""
    out = []
    for t in tokens:
        lp = _logprob(_word_id(t.strip()))
        top = ((t, lp), *((f"alt{j}", lp - 1.0 - j) for j in range(max(k - 1, 0))))
        out.append(TokenLogprob(_word_id(t.strip()), t, lp, top[:k]))
    return tuple(out)


def _words_of(text: str, sampling: Sampling) -> list[str]:
    """A candidate's words; under a JSON constraint the candidate wrapped as a JSON object."""
    if sampling.structured is not None:
        text = json.dumps({"answer": text})
    return text.split()


def _words_between(text: str, start: str, end: str) -> set[str]:
    """The lower-cased words of ``text`` between two markers, without punctuation."""
    part = text.split(start, 1)[-1].split(end, 1)[0]
    return {w.strip(".,!?:;").lower() for w in part.split()} - {""}


def _tokens(words: list[str]) -> list[str]:
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


class FakeEngine:
    vocab_size = 1000

    def __init__(
        self,
        candidates: list[str] | None = None,
        max_model_len: int = 512,
        chat_template: bool = True,
        start_error: Exception | None = None,
    ) -> None:
        self.candidates = candidates or CANDIDATES
        self.max_model_len = max_model_len
        self.chat_template = chat_template
        self.start_error = start_error
        self.started = False
        self.stats = EngineStats()
        self.calls: list[tuple[list[int], Sampling, int, str]] = []
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.streamed_tokens = 0  # every token ``stream`` has yielded, over all its calls
        self._open = asyncio.Event()
        self._open.set()
        self.token_limit: int | None = None  # streams pause before exceeding it (see limit_tokens)
        self._limit_changed = asyncio.Event()
        self._vocab: dict[int, str] = {}
        self.encode_text(" ".join("0123456789"))  # the digits, for a judge's ratings
        self.judged: list[list[int]] = []  # every judge prompt read
        self.judged_with: list[Adapter | None] = []  # each judge round's adapter
        self.adapters: dict[str, Adapter] = {}  # loaded, by name
        self.removed: list[Adapter] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self.started

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    def shutdown(self) -> None:
        self.started = False

    # ------------------------------------------------------------------ tokenizer
    def has_chat_template(self) -> bool:
        return self.chat_template

    def unfinished_requests(self) -> int:
        return len(self.running)

    def prometheus_exposition(self) -> bytes:
        """vLLM-named gauges for what the fake knows, so /metrics' merging is exercised."""
        return (
            b"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            b"# TYPE vllm:num_requests_running gauge\n"
            + f'vllm:num_requests_running{{model_name="fake"}} {len(self.running)}.0\n'.encode()
        )

    def encode_text(self, text: str) -> list[int]:
        ids = [_word_id(w) for w in text.split()]
        self._vocab.update(zip(ids, text.split(), strict=True))
        return ids

    def decode(self, token_ids: list[int]) -> str:
        return " ".join(self._vocab.get(t, f"<{t}>") for t in token_ids)

    def _prompt_logprobs(self, prompt_ids: list[int], sampling: Sampling) -> Logprobs | None:
        if sampling.prompt_logprobs is None:
            return None
        tokens = _tokens(self.decode(prompt_ids).split())
        scored = _scored(tokens, sampling.prompt_logprobs)
        return (TokenLogprob(scored[0].token_id, tokens[0], None), *scored[1:]) if scored else ()

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode_text(" ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>")

    # ------------------------------------------------------------------ generation
    def hold(self) -> None:
        """Every generation waits from now on until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def limit_tokens(self, n: int | None) -> None:
        """Streams pause once they have ``n`` tokens until the limit is raised (None: no limit),
        so that early rejection's checkpoint is reached by construction."""
        self.token_limit = n
        self._limit_changed.set()
        self._limit_changed = asyncio.Event()

    async def add_adapter(self, adapter: Adapter) -> None:
        self.adapters[adapter.name] = adapter

    async def remove_adapter(self, adapter: Adapter) -> None:
        assert self.adapters.get(adapter.name) == adapter, f"{adapter} was not loaded"
        del self.adapters[adapter.name]
        self.removed.append(adapter)

    def _candidates(self, sampling: Sampling) -> list[str]:
        """The base's candidates; through an adapter, reversed (what shows it was applied)."""
        if sampling.adapter is None:
            return self.candidates
        assert self.adapters.get(sampling.adapter.name) == sampling.adapter, f"{sampling.adapter} is not loaded"
        return self.candidates[::-1]

    def die(self) -> None:
        """What vLLM does when its engine core process is killed: not ready, and every running
        generation fails (vLLM raises EngineDeadError)."""
        self.started = False
        self.release()

    async def _admitted(self, request_id: str) -> None:
        """Wait while held (recorded as running; an abort if cancelled), then fail as vLLM does
        if the engine died meanwhile."""
        self.running.add(request_id)
        try:
            await self._open.wait()
        except asyncio.CancelledError:
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)
        if not self.started:
            raise RuntimeError("EngineDeadError: engine core process died")

    async def generate(self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str) -> GenerationResult:
        self.calls.append((prompt_ids, sampling, n, request_id))
        await self._admitted(request_id)
        candidates = self._candidates(sampling)
        shift = (sampling.seed or 0) % len(candidates)
        out = []
        for i in range(n):
            words = _words_of(candidates[(shift + i) % len(candidates)], sampling)
            finish = "length" if len(words) > sampling.max_tokens else "stop"
            kept = words[: sampling.max_tokens]
            lps = None if sampling.logprobs is None else _scored(_tokens(kept), sampling.logprobs)
            out.append(Generation(" ".join(kept), len(kept), finish, lps))
        return GenerationResult(len(prompt_ids), out, self._prompt_logprobs(prompt_ids, sampling))

    async def next_token_logprobs(
        self,
        prompts: list[list[int]],
        token_ids: list[int],
        request_id: str,
        priority: int = 0,
        adapter: Adapter | None = None,
    ) -> list[dict[int, float]]:
        """A judge that rates 9 an answer sharing a word with the rubric, 0 one that shares none
        (the other digits at log-prob -30), read after :meth:`hold` like a generation."""
        await self._admitted(request_id)
        self.judged += prompts
        self.judged_with.append(adapter)
        out = []
        for ids in prompts:
            text = self.decode(ids)
            rubric = _words_between(text, "Rubric:", "Question:")
            answer = _words_between(text, "Answer:", "Rating")
            rating = "9" if rubric & answer else "0"
            out.append({t: -0.01 if self._vocab.get(t) == rating else -30.0 for t in token_ids})
        return out

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncGenerator[Delta, None]:
        """The first candidate, a word at a time; ``hold()`` stops it after the first word."""
        self.calls.append((prompt_ids, sampling, 1, request_id))
        self.running.add(request_id)
        candidates = self._candidates(sampling)
        words = _words_of(candidates[(sampling.seed or 0) % len(candidates)], sampling)
        words = words[: sampling.max_tokens]
        try:
            for i, piece in enumerate(_tokens(words)):
                if i:
                    await self._open.wait()
                    if not self.started:
                        raise RuntimeError("EngineDeadError: engine core process died")
                while self.token_limit is not None and i >= self.token_limit:
                    await self._limit_changed.wait()
                last = i == len(words) - 1
                lps = () if sampling.logprobs is None else _scored([piece], sampling.logprobs)
                prompt_lps = self._prompt_logprobs(prompt_ids, sampling) if i == 0 else None
                self.streamed_tokens += 1
                yield Delta(piece, i + 1, "stop" if last else None, len(prompt_ids), lps, prompt_lps)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)


class SlowFakeEngine(FakeEngine):
    """The fake, taking ``delay`` seconds per generation: requests stay in flight long enough
    for a test to kill the replica serving them (Ray Serve's replacement and retries)."""

    delay = 1.0

    async def generate(self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str) -> GenerationResult:
        await asyncio.sleep(self.delay)
        return await super().generate(prompt_ids, sampling, n, request_id)
