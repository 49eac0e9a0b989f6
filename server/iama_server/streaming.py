"""Streamed answers of the OpenAI routes (``stream: true``): server-sent events of OpenAI chunks,
one generator per mode and one admission and error policy for all.

* **plain** (nothing to score, one sample): tokens as vLLM produces them (:func:`_plain`);
* **searched** (early rejection, no log-probs or echo): once a checkpoint leaves one candidate
  that can be chosen, its tokens stream as vLLM produces them; if several survive to the end,
  the chosen one is sent after selection (:func:`_searched`);
* **selected** (everything else): selection needs all N candidates, so the call runs to the
  end first (:meth:`AlignmentService.complete`: a failure is still a JSON error with its
  status), then the chosen completion is sent as chunks (:func:`_selected`).

The policy of the live streams (:func:`_admitted`): admission is decided before the response
starts (a 429 cannot follow a 200) and the slot is held until the response ends, whether or not
its body ever started. After the 200 an error can only be an OpenAI error event, built by
``errors.py`` like the JSON error of the same status: the request timeout (a deadline on every
chunk, so it holds however slowly the client reads), the engine refusing the request (known only
once it takes it) or the engine dying. A client that goes away cancels the stream (Starlette),
which aborts the generation in vLLM. A selected stream is not live: its failures come before
the 200, as JSON errors (``AlignmentService.complete``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from iama_server.accounting import CLIENT_GONE, Accounting, Tally
from iama_server.admission import Receive
from iama_server.calls import AlignmentCall
from iama_server.errors import APIError, ErrorCode
from iama_server.outcome import Outcome
from iama_server.rendering import (
    SSE_DONE,
    chunk_base,
    now,
    piece_logprobs,
    sse,
    stream_chunk,
    stream_chunks,
    usage,
    usage_chunk,
)
from iama_server.schemas import ChatCompletionRequest, CompletionRequest, Usage
from iama_server.service import Admitted, AlignmentService

SSE_HEADERS = {"Cache-Control": "no-cache"}
Events = AsyncGenerator[dict[str, Any], None]  # OpenAI chunk objects


@dataclass(frozen=True)
class StreamFormat:
    """How the chunks look: the route's object names, the served model, the usage asked for."""

    chat: bool
    model: str
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's continuous_usage_stats: the usage so far on every chunk

    @classmethod
    def of(cls, body: CompletionRequest | ChatCompletionRequest, model: str) -> StreamFormat:
        options = body.stream_options
        return cls(
            chat=isinstance(body, ChatCompletionRequest),
            model=model,
            include_usage=options is not None and options.include_usage,
            continuous_usage=options is not None and options.continuous_usage_stats,
        )


async def stream_response(
    service: AlignmentService, tally: Tally, fmt: StreamFormat, receive: Receive, accounting: Accounting
) -> StreamingResponse:
    """The stream of the call's mode (streams carry one prompt: the schemas refuse more). A live
    stream's usage is recorded when its body ends (``tally``), a selected one's by the route."""
    (call,) = tally.calls
    created = now()  # the request's arrival, before any wait for admission
    if call.mode == "sample" and call.budget == 1:
        return await _admitted(service, tally, accounting, _plain(service, call, fmt, created, tally))
    if call.mode == "early_rejection" and call.sampling.logprobs is None and call.echo is None:
        return await _admitted(service, tally, accounting, _searched(service, call, fmt, created, tally))
    tally.outcomes = await service.complete(tally.calls, receive)
    tally.queue_s = tally.outcomes[0].queue_s
    (outcome,) = tally.outcomes
    return StreamingResponse(_sse(_selected(outcome, fmt)), media_type="text/event-stream", headers=SSE_HEADERS)


class _AdmittedStream(StreamingResponse):
    """A stream that holds an admission slot until the response ends, even when its body never
    starts (the client went away while the headers were sent): the slot is released here, not
    in the body's generator, whose ``finally`` would then never run. Its usage row is written
    here too, once the key has been charged what the stream used."""

    def __init__(self, body: AsyncIterator[bytes], slot: AsyncExitStack, held: Admitted, end: _StreamEnd) -> None:
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self.slot, self.held, self.end = slot, held, end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            tally = self.end.tally
            spent = tally.spent_tokens()
            if spent is not None:  # else the key stays charged the admission cost
                self.held.spent_tokens = spent
            await self.slot.aclose()
            await self.end.accounting.finish(tally, self.end.status)


@dataclass
class _StreamEnd:
    """How a live stream ended (the status of its error event, if any) and where that goes."""

    tally: Tally
    accounting: Accounting
    status: int = 200


async def _admitted(
    service: AlignmentService, tally: Tally, accounting: Accounting, events: Events
) -> StreamingResponse:
    """Every live stream's admission and error policy (the module docstring)."""
    (call,) = tally.calls
    slot = AsyncExitStack()
    held = await slot.enter_async_context(service.admitted([call]))
    tally.queue_s, tally.streaming = held.queue_s, True
    end = _StreamEnd(tally, accounting)
    deadline = asyncio.get_running_loop().time() + service.settings.request_timeout_s

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(events):
                while True:
                    async with asyncio.timeout_at(deadline):  # around the engine's work, never a yield
                        chunk = await anext(events, None)
                    if chunk is None:
                        break
                    yield sse(chunk)
            yield SSE_DONE
        except TimeoutError:
            service.cancelled("timeout", call.request_id, stream=True)
            end.status = 504
            yield sse(APIError(504, "request exceeded the server's timeout", code=ErrorCode.TIMEOUT).body())
            yield SSE_DONE
        except APIError as exc:
            end.status = exc.status
            yield sse(exc.body())
            yield SSE_DONE
        except asyncio.CancelledError:
            end.status = CLIENT_GONE
            service.cancelled("disconnect", call.request_id, stream=True)
            raise

    return _AdmittedStream(guarded(), slot, held, end)


async def _sse(events: Events) -> AsyncIterator[bytes]:
    async for chunk in events:
        yield sse(chunk)
    yield SSE_DONE


async def _plain(
    service: AlignmentService, call: AlignmentCall, fmt: StreamFormat, created: int, tally: Tally
) -> Events:
    """Plain generation streamed token by token, as vLLM produces it."""
    base = chunk_base(chat=fmt.chat, model=fmt.model, response_id=call.request_id, created=created)
    if fmt.chat:
        yield stream_chunk(base, chat=True, text="", role=True)
    at = 0  # characters streamed so far: completions' text_offset
    asked = call.sampling.logprobs is not None
    deltas = service.stream(call)
    async with contextlib.aclosing(deltas):  # closing it aborts the generation at once
        async for delta in deltas:
            tally.generated_tokens = delta.tokens  # so far: a stream cut short is recorded with what it generated
            if call.echo is not None and at == 0:
                prompt = delta.prompt_logprobs
                lps = None if prompt is None else piece_logprobs(prompt, chat=False)
                yield stream_chunk(base, chat=False, text=call.echo, logprobs=lps)
                at = len(call.echo)
            if delta.text or (asked and delta.logprobs):
                lps = piece_logprobs(delta.logprobs, chat=fmt.chat, offset=at) if asked else None
                chunk = stream_chunk(base, chat=fmt.chat, text=delta.text, logprobs=lps)
                if fmt.continuous_usage:
                    p, n = len(call.prompt_ids), delta.tokens
                    chunk["usage"] = Usage(prompt_tokens=p, completion_tokens=n, total_tokens=p + n).model_dump()
                yield chunk
                at += len(delta.text)
            if delta.finish_reason is not None:
                yield stream_chunk(base, chat=fmt.chat, text=None if fmt.chat else "", finish=delta.finish_reason)
                if fmt.include_usage:
                    p, n = delta.prompt_tokens, delta.tokens
                    yield usage_chunk(base, Usage(prompt_tokens=p, completion_tokens=n, total_tokens=p + n))


async def _searched(
    service: AlignmentService, call: AlignmentCall, fmt: StreamFormat, created: int, tally: Tally
) -> Events:
    """Early rejection, the sole survivor's text streamed as it is generated."""
    base = chunk_base(chat=fmt.chat, model=fmt.model, response_id=call.request_id, created=created)
    pieces: asyncio.Queue[str] = asyncio.Queue()

    def generated(tokens: int) -> None:  # every candidate's, so far: a stream ended mid-search is charged them
        tally.generated_tokens = (tally.generated_tokens or 0) + tokens

    task = asyncio.ensure_future(service.run(call, sink=pieces.put_nowait, on_tokens=generated))
    try:
        if fmt.chat:
            yield stream_chunk(base, chat=True, text="", role=True)
        streamed = False
        while not task.done() or not pieces.empty():
            getter = asyncio.ensure_future(pieces.get())
            try:
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting = not getter.done()
                if waiting:
                    getter.cancel()  # the search ended first, or the stream was cancelled
            if waiting:
                continue
            yield stream_chunk(base, chat=fmt.chat, text=getter.result())
            streamed = True
        tally.outcomes = [task.result()]
        chunks = stream_chunks(
            task.result(), chat=fmt.chat, model=fmt.model, response_id=call.request_id,
            created=base["created"], include_usage=fmt.include_usage,
        )  # fmt: skip
        if fmt.chat:
            chunks = chunks[1:]  # the role chunk went first
        if streamed:  # the text went already: only the finish (and usage) chunks are left
            chunks = [ch for ch in chunks if "usage" in ch or ch["choices"][0]["finish_reason"] is not None]
        for chunk in chunks:
            yield chunk
    finally:
        task.cancel()  # a disconnect or timeout stops every candidate in vLLM


async def _selected(outcome: Outcome, fmt: StreamFormat) -> Events:
    """The already-selected completion, as chunks."""
    call = outcome.call
    chunks = stream_chunks(
        outcome, chat=fmt.chat, model=fmt.model, response_id=call.request_id, created=now(),
        include_usage=fmt.include_usage,
    )  # fmt: skip
    if fmt.continuous_usage:  # every token was generated before the first chunk: the usage is final throughout
        final = usage(outcome).model_dump()
        chunks = [c if "usage" in c else {**c, "usage": final} for c in chunks]
    for chunk in chunks:
        yield chunk
