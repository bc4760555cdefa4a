"""The ensemble behind a small async interface: a chat request in, deltas out."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from nanovl.client import TritonClient, TritonStreamError, bytes_tensor
from nanovl.errors import ClientError, NanoVLError, ServerError, from_wire

from .schemas import ChatCompletionRequest

_DTYPES = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32, "top_k": np.int32,
           "seed": np.int64}
STAGES = ("preprocessing", "vision_encoder", "llm", "detokenizer", "ensemble")


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


def _wire_error(message: str) -> NanoVLError:
    wire = from_wire(message)
    cls = ClientError if 400 <= wire.status < 500 else ServerError
    error = cls(wire.message, param=wire.param, code=wire.code)
    error.status = wire.status
    return error


class Ensemble:
    def __init__(self, url: str, model: str = "ensemble", timeout_s: float | None = None):
        self.client = TritonClient(url)
        self.model = model
        self.timeout_s = timeout_s

    async def ready(self) -> bool:
        if not await self.client.server_ready():
            return False
        for stage in STAGES:
            if not await self.client.model_ready(stage):
                return False
        return True

    async def generate(self, request: ChatCompletionRequest, request_id: str) -> AsyncIterator[Delta]:
        inputs = {"messages": bytes_tensor(json.dumps(request.messages))}
        for name, value in request.sampling_inputs().items():
            if value is not None:
                inputs[name] = np.array([value], dtype=_DTYPES[name])
        try:
            async for out in self.client.stream(self.model, inputs, request_id=request_id, timeout=self.timeout_s):
                if "text_output" not in out:
                    continue   # a bare final flag
                reason = out["finish_reason"][0].decode()
                if reason in ("cancelled", "error"):
                    raise ServerError(f"generation ended: {reason}")
                yield Delta(out["text_output"][0].decode("utf-8"), out["token_ids"].tolist(), reason or None,
                            int(out["prompt_tokens"][0]), int(out["completion_tokens"][0]))
        except TritonStreamError as exc:
            raise _wire_error(str(exc)) from None
        except Exception as exc:
            import grpc

            if isinstance(exc, grpc.RpcError):
                error = ServerError(f"Triton is unavailable: {exc.details() if hasattr(exc, 'details') else exc}")
                error.status = 503
                raise error from None
            raise
