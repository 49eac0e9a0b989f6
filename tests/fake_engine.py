"""A hand-written :class:`iama_server.engine.GenerationEngine` with fixed candidates.

It lets the whole request path (routes, validation, admission, scoring, selection, rendering)
run in-process in milliseconds, without vLLM. Behaviour that needs time is built in, not
raced: ``hold()`` keeps every generation waiting until ``release()``, so a timeout or a
disconnect happens *by construction*, and cancellations are recorded as aborts.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator

from iama_server.engine import Delta, EngineStats, Generation, GenerationResult, Sampling

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


class FakeEngine:
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
        self._open = asyncio.Event()
        self._open.set()
        self.token_limit: int | None = None  # streams pause before exceeding it (see limit_tokens)
        self._limit_changed = asyncio.Event()

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

    def encode_text(self, text: str) -> list[int]:
        return [zlib.crc32(w.encode()) % 1000 for w in text.split()]

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

    def die(self) -> None:
        """What vLLM does when its engine core process is killed: not ready, and every running
        generation fails (vLLM raises EngineDeadError)."""
        self.started = False
        self.release()

    async def generate(self, prompt_ids: list[int], sampling: Sampling, n: int, request_id: str) -> GenerationResult:
        self.calls.append((prompt_ids, sampling, n, request_id))
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
        shift = (sampling.seed or 0) % len(self.candidates)
        out = []
        for i in range(n):
            words = self.candidates[(shift + i) % len(self.candidates)].split()
            finish = "length" if len(words) > sampling.max_tokens else "stop"
            out.append(Generation(" ".join(words[: sampling.max_tokens]), min(len(words), sampling.max_tokens), finish))
        return GenerationResult(prompt_tokens=len(prompt_ids), candidates=out)

    async def stream(self, prompt_ids: list[int], sampling: Sampling, request_id: str) -> AsyncIterator[Delta]:
        """The first candidate, a word at a time; ``hold()`` stops it after the first word."""
        self.calls.append((prompt_ids, sampling, 1, request_id))
        self.running.add(request_id)
        words = self.candidates[(sampling.seed or 0) % len(self.candidates)].split()[: sampling.max_tokens]
        try:
            for i, word in enumerate(words):
                if i:
                    await self._open.wait()
                while self.token_limit is not None and i >= self.token_limit:
                    await self._limit_changed.wait()
                last = i == len(words) - 1
                piece = word if i == 0 else f" {word}"
                yield Delta(piece, i + 1, "stop" if last else None, len(prompt_ids))
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)
