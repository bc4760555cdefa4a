"""What chat and text completions share: the model check, admission, the stream of deltas with its timings,
collecting a non-streamed answer while watching for a client that leaves, and SSE framing."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from .errors import HTTPError, error_event
from .schemas import SamplingRequest
from .backend import Delta

log = logging.getLogger("nanovl.frontend")
DISCONNECT_POLL_S = 0.5


class Generation:
    """One admitted generation: its deltas (the first already in hand) and their timings. aclose() frees the
    admission slot, stops the generation if it is still running, and records the request's metrics."""

    def __init__(self, request: Request, deltas: AsyncIterator[Delta], first: Delta | None, started: float):
        self.request_id = request.state.request_id
        self.state = request.scope["state"]
        self.app_state = request.app.state
        self.deltas = deltas
        self.first = first
        self.last = first
        self.lasts: dict[int, Delta] = {first.index: first} if first else {}   # each choice's latest delta
        self.started = started
        self.ttft_s = time.perf_counter() - started
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Delta]:
        itl = self.app_state.metrics.itl
        delta, previous = self.first, time.perf_counter()
        while delta is not None:
            self.last = self.lasts[delta.index] = delta
            yield delta
            delta = await anext(self.deltas, None)
            now = time.perf_counter()
            if delta is not None and delta.token_ids:
                for _ in delta.token_ids:    # per token: a response carries every token ready since the last
                    itl.observe((now - previous) / len(delta.token_ids))
            previous = now

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.deltas.aclose()   # a client that went away stops its generation now
        finally:
            self.app_state.admission.release()
            self._record()

    def _record(self) -> None:
        metrics, last = self.app_state.metrics, self.last
        usage = usage_counts(self.lasts)
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        metrics.e2e.observe(time.perf_counter() - self.started)
        metrics.prompt_tokens.inc(prompt)
        metrics.generation_tokens.inc(completion)
        self.state["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "ttft_s": self.ttft_s,
                               "finish_reason": last.finish_reason if last else None}


async def open_generation(request: Request, body: SamplingRequest, response_id: str) -> Generation:
    """Admits the request and waits for its first delta: errors until then are plain HTTP errors."""
    app_state = request.app.state
    if body.model != app_state.settings.model_name:
        raise HTTPError(404, f"The model `{body.model}` does not exist", type_="invalid_request_error",
                        param="model", code="model_not_found")
    started = time.perf_counter()
    await app_state.admission.acquire()
    deltas = app_state.backend.generate(body, response_id)
    try:
        first = await anext(deltas, None)
    except BaseException:
        await deltas.aclose()
        app_state.admission.release()
        raise
    generation = Generation(request, deltas, first, started)
    app_state.metrics.ttft.observe(generation.ttft_s)
    return generation


@dataclass
class Collected:
    """A whole non-streamed answer: its deltas, of every choice."""

    deltas: list[Delta]

    def of(self, index: int) -> list[Delta]:
        return [d for d in self.deltas if d.index == index]

    def text(self, index: int = 0) -> str:
        return "".join(d.text for d in self.of(index))

    def finish_reason(self, index: int = 0) -> str:
        return next((d.finish_reason for d in reversed(self.of(index)) if d.finish_reason), None) or "stop"

    @property
    def usage(self) -> dict:
        return usage_counts({d.index: d for d in self.deltas})


async def collect_unless_disconnected(request: Request, generation: Generation) -> Collected | None:
    """All deltas; None if the client went away first (then the generation is stopped)."""
    async def collect() -> Collected:
        return Collected([delta async for delta in generation])

    task = asyncio.ensure_future(collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                log.info("%s: client disconnected, generation stopped", generation.request_id)
                return None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})   # let it leave the stream before the stream is closed
        await generation.aclose()


def sse_response(events: AsyncIterator[str], generation: Generation) -> StreamingResponse:
    # The background close also runs when the client left before the first event, when sse() never started.
    return StreamingResponse(sse(events, generation), media_type="text/event-stream",
                             background=BackgroundTask(generation.aclose))


async def sse(events: AsyncIterator[str], generation: Generation) -> AsyncIterator[str]:
    """Server-sent events from JSON strings; an error after the stream started is an event, then [DONE]."""
    try:
        async for event in events:
            yield f"data: {event}\n\n"
    except Exception as exc:
        log.exception("%s failed mid-stream", generation.request_id)
        yield error_event(exc)
    finally:
        await generation.aclose()
    yield "data: [DONE]\n\n"


def usage_before_tokens(first: Delta | None) -> Delta | None:
    """The usage before any token: the first delta's prompt count, no completion tokens yet."""
    return Delta("", [], None, first.prompt_tokens, 0, cached_tokens=first.cached_tokens) if first else None


def usage_counts(last: Delta | dict[int, Delta] | None) -> dict:
    """OpenAI's usage from the latest delta of each choice (a dict by choice index, or one delta): the prompt
    counted once, completion tokens summed over the choices."""
    lasts = list(last.values()) if isinstance(last, dict) else [last] if last else []
    prompt = max((d.prompt_tokens for d in lasts), default=0)
    completion = sum(d.completion_tokens for d in lasts)
    cached = max((d.cached_tokens for d in lasts), default=0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
