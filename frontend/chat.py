"""POST /v1/chat/completions, streamed (SSE) and not."""
from __future__ import annotations

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


def _usage(last: Delta | None) -> CompletionUsage:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    settings = request.app.state.settings
    if body.model != settings.model_name:
        error = ClientError(f"The model `{body.model}` does not exist", param="model", code="model_not_found")
        error.status = 404
        raise error
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    deltas = request.app.state.ensemble.generate(body, request_id)
    started = time.perf_counter()
    first = await anext(deltas, None)   # errors before the first token are plain HTTP errors
    meta = {"id": request_id, "created": created, "model": body.model}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(meta, first, deltas, include_usage, started), media_type="text/event-stream")
    text, last = [], first
    if first is not None:
        text.append(first.text)
        async for delta in deltas:
            text.append(delta.text)
            last = delta
    _log(request_id, started, last)
    return ChatCompletion(
        **meta, object="chat.completion", usage=_usage(last),
        choices=[{"index": 0, "message": {"role": "assistant", "content": "".join(text), "refusal": None},
                  "finish_reason": (last.finish_reason if last else None) or "stop", "logprobs": None}],
    ).model_dump(exclude_unset=True)


async def _sse(meta: dict, first: Delta | None, deltas: AsyncIterator[Delta], include_usage: bool,
               started: float) -> AsyncIterator[str]:
    def chunk(delta: dict, finish_reason=None, usage=None, choices=True) -> str:
        extra = {"usage": usage} if usage is not None else {}
        body = ChatCompletionChunk(
            **meta, object="chat.completion.chunk",
            choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason}] if choices else [], **extra)
        return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"

    last = first
    try:
        yield chunk({"role": "assistant", "content": ""})
        pending = [first] if first is not None else []
        while True:
            for delta in pending:
                last = delta
                if delta.text:
                    yield chunk({"content": delta.text})
                if delta.finish_reason:
                    yield chunk({}, finish_reason=delta.finish_reason)
            nxt = await anext(deltas, None)
            if nxt is None:
                break
            pending = [nxt]
        if include_usage:
            yield chunk({}, usage=_usage(last), choices=False)
    except Exception as exc:   # after the stream started, an error is an event, then the stream ends
        log.exception("%s failed mid-stream", meta["id"])
        status = getattr(exc, "status", 500)
        message = getattr(exc, "message", str(exc))
        import json
        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error', 'param': None, 'code': status}})}\n\n"
    _log(meta["id"], started, last)
    yield "data: [DONE]\n\n"


def _log(request_id: str, started: float, last: Delta | None) -> None:
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    log.info("%s done in %.3f s: prompt %d tokens, completion %d tokens, finish %s", request_id,
             time.perf_counter() - started, prompt, completion, last.finish_reason if last else None)
