"""A hand-written :class:`iama_server.engine.GenerationEngine` with fixed candidates.

It lets the whole request path (routes, validation, admission, scoring, selection, rendering)
run in-process in milliseconds, without vLLM. Behaviour that needs time is built in, not
raced: ``hold()`` keeps every generation waiting until ``release()``, so a timeout or a
disconnect happens *by construction*, and cancellations are recorded as aborts.
"""

from __future__ import annotations

import asyncio
import zlib

from iama_server.engine import Generation, GenerationResult, Sampling

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
        self.calls: list[tuple[list[int], Sampling, int, str]] = []
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self._open = asyncio.Event()
        self._open.set()

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
        shift = (sampling.seed or 0) % len(self.candidates)
        out = []
        for i in range(n):
            words = self.candidates[(shift + i) % len(self.candidates)].split()
            finish = "length" if len(words) > sampling.max_tokens else "stop"
            out.append(Generation(" ".join(words[: sampling.max_tokens]), min(len(words), sampling.max_tokens), finish))
        return GenerationResult(prompt_tokens=len(prompt_ids), candidates=out)
