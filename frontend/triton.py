"""The ensemble behind a small async interface: a chat or completion request in, deltas out."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
import numpy as np

from nanovl.client import TritonClient, TritonStreamError, bytes_tensor
from nanovl.supervisor import probe, probe_inputs
from nanovl.errors import ClientError, NanoVLError, ServerError, from_wire

from .errors import HTTPError
from .schemas import SamplingRequest

log = logging.getLogger("nanovl.frontend")
_DTYPES = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32, "top_k": np.int32,
           "seed": np.int64, "min_tokens": np.int32, "frequency_penalty": np.float32,
           "presence_penalty": np.float32, "repetition_penalty": np.float32, "logprobs": np.int32,
           "stop": np.object_}
STAGES = ("preprocessing", "vision_encoder", "llm", "detokenizer", "ensemble")
# The ensemble outputs a response needs; the logprob ones only when asked for (fewer tensors per response).
_OUTPUTS = ("text_output", "token_ids", "finish_reason", "prompt_tokens", "completion_tokens")
_LOGPROB_OUTPUTS = ("token_logprobs", "tokens", "top_logprob_values", "top_logprob_tokens")


@dataclass
class Delta:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict] | None = None    # OpenAI ChatCompletionTokenLogprob dicts, when asked for


def _logprobs(out: dict) -> list[dict] | None:
    values = out.get("token_logprobs")
    if values is None or not len(values):
        return None

    def entry(piece: bytes, logprob: float) -> dict:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": float(logprob), "bytes": list(piece)}

    return [{**entry(piece, lp), "top_logprobs": [entry(p, v) for p, v in zip(top_pieces, top_values)]}
            for piece, lp, top_pieces, top_values in zip(out["tokens"], values, out["top_logprob_tokens"],
                                                           out["top_logprob_values"])]


# Triton's own (untagged) words for a model that cannot serve now: the request may succeed later.
_UNAVAILABLE = ("is not ready", "unknown model", "is not healthy", "unavailable")


def unavailable(detail: str) -> HTTPError:
    return HTTPError(503, f"Triton is unavailable: {detail}", type_="service_unavailable",
                     code="triton_unavailable", headers={"Retry-After": "1"})


def _rpc_error(exc) -> HTTPError:
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return HTTPError(504, "the generation did not finish within the request timeout", type_="timeout_error",
                         code="request_timeout")
    return unavailable(exc.details() or str(exc.code()))


def _wire_error(message: str) -> NanoVLError:
    wire = from_wire(message)
    if wire.status == 500 and any(words in wire.message.lower() for words in _UNAVAILABLE):
        return unavailable(wire.message)
    cls = ClientError if 400 <= wire.status < 500 else ServerError
    error = cls(wire.message, param=wire.param, code=wire.code)
    error.status = wire.status
    return error


STALL_CHECK_S = 2.0   # silence on a stream after which llm is asked whether the request still exists


class Ensemble:
    def __init__(self, url: str, model: str = "ensemble", timeout_s: float | None = None,
                 stall_check_s: float = STALL_CHECK_S):
        self.client = TritonClient(url)
        self.model = model
        self.timeout_s = timeout_s
        self.stall_check_s = stall_check_s

    async def ready(self) -> bool:
        """Triton up, every model ready, and every stage answering a real request: tritonserver 2.51 keeps a
        model READY after its stub died, so the flag alone would say yes while every request fails."""
        if not await self.client.server_ready():
            return False
        for stage in STAGES:
            if not await self.client.model_ready(stage):
                return False
        for stage, inputs in probe_inputs().items():
            if await probe(self.client, stage, inputs, timeout=5) is not None:
                return False
        return True

    async def generate(self, request: SamplingRequest, request_id: str) -> AsyncIterator[Delta]:
        name, text = request.prompt_input()
        inputs = {name: bytes_tensor(text)}
        for name, value in request.sampling_inputs().items():
            if value is not None:
                values = [v.encode() for v in value] if name == "stop" else [value]
                inputs[name] = np.array(values, dtype=_DTYPES[name])
        finished = False
        outputs = _OUTPUTS + (_LOGPROB_OUTPUTS if "logprobs" in inputs else ())
        started = time.time()
        stream = self._watched(self.client.stream(self.model, inputs, request_id=request_id,
                                                  timeout=self.timeout_s, outputs=outputs), request_id, started)
        try:
            async for out in stream:
                if "text_output" not in out:
                    continue   # a bare final flag
                reason = out["finish_reason"][0].decode()
                if reason in ("cancelled", "error"):
                    raise ServerError(f"generation ended: {reason}")
                finished = bool(reason)
                yield Delta(out["text_output"][0].decode("utf-8"), out["token_ids"].tolist(), reason or None,
                            int(out["prompt_tokens"][0]), int(out["completion_tokens"][0]), _logprobs(out))
            finished = True
        except TritonStreamError as exc:
            finished = True   # the error ended the request on the server
            raise _wire_error(str(exc)) from None
        except grpc.RpcError as exc:
            finished = exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED   # only a timeout leaves llm running
            raise _rpc_error(exc) from None
        finally:
            await stream.aclose()
            if not finished:
                # Left early (client gone, timeout): on tritonserver 2.51 the ensemble's cancel never reaches
                # llm, so tell llm directly; its slot is free at the next engine step.
                asyncio.get_running_loop().create_task(self.stop(request_id))

    async def _watched(self, stream: AsyncIterator[dict], request_id: str, started: float) -> AsyncIterator[dict]:
        """The stream's responses; if none comes for stall_check_s, asks llm whether the request was lost.

        A request in flight when llm's stub died is never answered (tritonserver 2.51 sends no error, and the
        supervisor's reload starts a stub that never heard of it): without this it would hang to the timeout.
        """
        pending = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=self.stall_check_s)
                if not done:
                    if await self._lost(request_id, started):
                        raise unavailable("the llm stage failed while generating this request; retry it")
                    continue
                task, pending = pending, None
                try:
                    out = task.result()
                except StopAsyncIteration:
                    return
                yield out
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await stream.aclose()

    async def _lost(self, request_id: str, started: float) -> bool:
        try:
            status = {}
            async for out in self.client.stream("llm", {"status_request": bytes_tensor(request_id)}, timeout=5):
                if "finish_reason" in out:
                    status = json.loads(out["finish_reason"][0])
        except TritonStreamError:
            return True   # llm cannot answer: its stub is dead
        except grpc.RpcError:
            return False  # the server itself is unreachable: the request's own call reports that
        # Unknown to an llm loaded after the request began: lost. Unknown to an older llm: not there yet
        # (a slow image fetch) or just finished: keep waiting.
        return not status.get("known", True) and status.get("started_at", 0.0) > started

    async def stop(self, request_id: str) -> None:
        try:
            async for _ in self.client.stream("llm", {"stop_request": bytes_tensor(request_id)}, timeout=10):
                pass
        except Exception:   # best effort: the detokenizer's is_cancelled() poll is the second path
            log.warning("could not send a stop for %s", request_id, exc_info=True)
