"""POST /v1/chat/completions, streamed (SSE) and not."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from nanovl.errors import ClientError

from .schemas import ChatCompletionRequest
from .triton import Delta

log = logging.getLogger("nanovl.frontend")
router = APIRouter()
DISCONNECT_POLL_S = 0.5


def _usage(last: Delta | None) -> CompletionUsage:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _logprobs(deltas: list[Delta], wanted: bool) -> dict | None:
    if not wanted:
        return None
    return {"content": [entry for d in deltas for entry in (d.logprobs or [])], "refusal": None}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    settings = request.app.state.settings
    if body.model != settings.model_name:
        error = ClientError(f"The model `{body.model}` does not exist", param="model", code="model_not_found")
        error.status = 404
        raise error
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    meta = {"id": request_id, "created": int(time.time()), "model": body.model}
    started = time.perf_counter()
    deltas = request.app.state.ensemble.generate(body, request_id)
    try:
        first = await anext(deltas, None)   # errors before the first token are plain HTTP errors
    except BaseException:
        await deltas.aclose()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(meta, first, deltas, include_usage, body.logprobs, started),
                                 media_type="text/event-stream")
    collected = await _collect_unless_disconnected(request, first, deltas)
    if collected is None:
        log.info("%s: client disconnected, generation stopped", request_id)
        return None
    last = collected[-1] if collected else None
    _log(request_id, started, last)
    return ChatCompletion(
        **meta, object="chat.completion", usage=_usage(last),
        choices=[{"index": 0, "message": {"role": "assistant", "content": "".join(d.text for d in collected),
                                          "refusal": None},
                  "finish_reason": (last.finish_reason if last else None) or "stop",
                  "logprobs": _logprobs(collected, body.logprobs)}],
    ).model_dump(exclude_unset=True)


async def _collect_unless_disconnected(request: Request, first: Delta | None, deltas) -> list[Delta] | None:
    """All deltas; None if the client went away first (then the generation is stopped)."""
    async def collect() -> list[Delta]:
        out = [first] if first is not None else []
        async for delta in deltas:
            out.append(delta)
        return out

    task = asyncio.ensure_future(collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                return None
    finally:
        if not task.done():
            task.cancel()
        await deltas.aclose()


async def _sse(meta: dict, first: Delta | None, deltas: AsyncIterator[Delta], include_usage: bool,
               logprobs: bool, started: float) -> AsyncIterator[str]:
    def chunk(delta: dict, finish_reason=None, usage=None, choices=True, token_logprobs=None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        if token_logprobs is not None:
            choice["logprobs"] = {"content": token_logprobs, "refusal": None}
        extra = {"usage": usage} if usage is not None else {}
        body = ChatCompletionChunk(**meta, object="chat.completion.chunk", choices=[choice] if choices else [],
                                   **extra)
        return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"

    last = first
    try:
        yield chunk({"role": "assistant", "content": ""})
        delta = first
        while delta is not None:
            last = delta
            if delta.text or (logprobs and delta.logprobs):
                yield chunk({"content": delta.text}, token_logprobs=delta.logprobs if logprobs else None)
            if delta.finish_reason:
                yield chunk({}, finish_reason=delta.finish_reason)
            delta = await anext(deltas, None)
        if include_usage:
            yield chunk({}, usage=_usage(last), choices=False)
    except Exception as exc:   # after the stream started, an error is an event, then the stream ends
        log.exception("%s failed mid-stream", meta["id"])
        error = {"message": getattr(exc, "message", str(exc)), "type": getattr(exc, "type", "internal_error"),
                 "param": getattr(exc, "param", None), "code": getattr(exc, "code", None)}
        yield f"data: {json.dumps({'error': error})}\n\n"
    finally:
        await deltas.aclose()   # a client that went away stops its generation now, not at garbage collection
    _log(meta["id"], started, last)
    yield "data: [DONE]\n\n"


def _log(request_id: str, started: float, last: Delta | None) -> None:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    log.info("%s done in %.3f s: prompt %d tokens, completion %d tokens, finish %s", request_id,
             time.perf_counter() - started, prompt, completion, last.finish_reason if last else None)
