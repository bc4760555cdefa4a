"""POST /v1/chat/completions, streamed (SSE) and not."""
from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import APIRouter, Request
from openai.types.chat import ChatCompletion

from .generation import (Generation, collect_unless_disconnected, open_generation, sse_response, usage_before_tokens,
                         usage_counts)
from .schemas import ChatCompletionRequest
from .backend import Delta

router = APIRouter()


def _logprobs(deltas: list[Delta], wanted: bool) -> dict | None:
    """The logprobs of one choice's deltas."""
    if not wanted:
        return None
    return {"content": [entry for d in deltas for entry in (d.logprobs or [])], "refusal": None}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    meta = {"id": f"chatcmpl-{request.state.request_id}", "created": int(time.time()), "model": body.model}
    generation = await open_generation(request, body, meta["id"])
    if body.stream:
        events = _chunks(meta, generation, body.include_usage(), body.logprobs, body.continuous_usage(), body.n)
        return sse_response(events, generation)
    answer = await collect_unless_disconnected(request, generation)
    if answer is None:
        return None
    return ChatCompletion(
        **meta, object="chat.completion", usage=answer.usage,
        choices=[{"index": i, "message": {"role": "assistant", "content": answer.text(i), "refusal": None},
                  "finish_reason": answer.finish_reason(i), "logprobs": _logprobs(answer.of(i), body.logprobs)}
                 for i in range(body.n)],
    ).model_dump(exclude_unset=True)


async def _chunks(meta: dict, generation: Generation, include_usage: bool, logprobs: bool,
                  continuous_usage: bool = False, n: int = 1) -> AsyncIterator[str]:
    # Plain dicts and json.dumps: building openai's ChatCompletionChunk per token cost more than the rest of
    # the frontend's work per token (the shape is checked against OpenAI's schema in tests).
    head = {**meta, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, so_far, finish_reason=None, token_logprobs=None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if token_logprobs is not None:
            choice["logprobs"] = {"content": token_logprobs, "refusal": None}
        usage = {"usage": usage_counts(so_far)} if continuous_usage else {}
        return json.dumps({**head, "choices": [choice], **usage})

    for index in range(n):   # each choice opens with its role, as OpenAI's streams do
        yield chunk(index, {"role": "assistant", "content": ""}, usage_before_tokens(generation.first))
    async for delta in generation:
        if delta.text or (logprobs and delta.logprobs):
            yield chunk(delta.index, {"content": delta.text}, generation.lasts,
                        token_logprobs=delta.logprobs if logprobs else None)
        if delta.finish_reason:
            yield chunk(delta.index, {}, generation.lasts, finish_reason=delta.finish_reason)
    if include_usage:
        yield json.dumps({**head, "choices": [], "usage": usage_counts(generation.lasts)})
