"""POST /v1/completions: a raw text prompt (no chat template) -> its continuation, streamed (SSE) and not."""
from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import APIRouter, Request
from openai.types import Completion

from .generation import Generation, collect_unless_disconnected, open_generation, sse_response, usage_counts
from .schemas import CompletionRequest
from .backend import Delta

router = APIRouter()


def _logprobs(deltas: list[Delta], offset: int) -> dict:
    """Chat-style token entries -> the legacy completions form; text_offset counts from the completion's start."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in (e for d in deltas for e in (d.logprobs or [])):
        out["tokens"].append(entry["token"])
        out["token_logprobs"].append(entry["logprob"])
        out["top_logprobs"].append({alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]})
        out["text_offset"].append(offset)
        offset += len(entry["token"])
    return out


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request):
    meta = {"id": f"cmpl-{request.state.request_id}", "created": int(time.time()), "model": body.model,
            "object": "text_completion"}
    generation = await open_generation(request, body, meta["id"])
    if body.stream:
        events = _chunks(meta, generation, body.include_usage(), body.logprobs is not None, body.continuous_usage())
        return sse_response(events, generation)
    answer = await collect_unless_disconnected(request, generation)
    if answer is None:
        return None
    return Completion(
        **meta, usage=answer.usage,
        choices=[{"index": i, "text": answer.text(i), "finish_reason": answer.finish_reason(i),
                  "logprobs": _logprobs(answer.of(i), 0) if body.logprobs is not None else None}
                 for i in range(body.n)],
    ).model_dump(exclude_unset=True)


async def _chunks(meta: dict, generation: Generation, include_usage: bool, logprobs: bool,
                  continuous_usage: bool = False) -> AsyncIterator[str]:
    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        # Plain JSON: openai's Completion type has no null finish_reason, which every chunk but the last carries.
        return json.dumps({**meta, "choices": choices, **({"usage": usage} if usage is not None else {})})

    offsets: dict[int, int] = {}   # per choice: where its next text starts
    async for delta in generation:
        offset = offsets.get(delta.index, 0)
        if delta.text or delta.finish_reason or (logprobs and delta.logprobs):
            yield chunk([{"index": delta.index, "text": delta.text, "finish_reason": delta.finish_reason,
                          "logprobs": _logprobs([delta], offset) if logprobs else None}],
                        usage_counts(generation.lasts) if continuous_usage else None)
        offsets[delta.index] = offset + len(delta.text)
    if include_usage:
        yield chunk([], usage=usage_counts(generation.lasts))
