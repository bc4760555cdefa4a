"""TritonBackend: the Backend (frontend/backend.py) that streams a request through Triton's ensemble over gRPC."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

import grpc

from nanovl.serving import control, tensors as T
from nanovl.serving.client import TritonClient, TritonStreamError, bytes_tensor
from nanovl.serving.supervisor import probe, probe_inputs
from nanovl.core.errors import ClientError, NanoVLError, ServerError, from_wire

from .backend import Delta
from .errors import HTTPError
from .schemas import ChatCompletionRequest, SamplingRequest

log = logging.getLogger("nanovl.frontend")
_SAMPLING = {**{t.name: t for t in T.SAMPLING}, "n": T.NUM_RETURN_SEQUENCES}
STAGES = tuple(T.MODELS)
# The ensemble outputs a response needs; the logprob ones only when asked for (fewer tensors per response).
_OUTPUTS = tuple(t.name for t in (T.TEXT_OUTPUT, T.TOKEN_IDS, T.FINISH_REASON, T.PROMPT_TOKENS, T.COMPLETION_TOKENS,
                                  T.SEQUENCE_INDEX, T.CACHED_TOKENS))
_LOGPROB_OUTPUTS = tuple(t.name for t in (T.TOKEN_LOGPROBS, T.TOKENS, T.TOP_LOGPROBS, T.TOP_LOGPROB_TOKENS))


def _logprobs(out: dict) -> list[dict] | None:
    values = out.get(T.TOKEN_LOGPROBS.name)
    if values is None or not len(values):
        return None

    def entry(piece: bytes, logprob: float) -> dict:
        return {"token": piece.decode("utf-8", errors="replace"), "logprob": float(logprob), "bytes": list(piece)}

    return [{**entry(piece, lp), "top_logprobs": [entry(p, v) for p, v in zip(top_pieces, top_values)]}
            for piece, lp, top_pieces, top_values in zip(out[T.TOKENS.name], values, out[T.TOP_LOGPROB_TOKENS.name],
                                                           out[T.TOP_LOGPROBS.name])]


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


class TritonBackend:
    """One gRPC client to tritonserver; each generate() is one stream of the ensemble model."""

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

    async def close(self) -> None:
        await self.client.close()

    async def generate(self, request: SamplingRequest, request_id: str) -> AsyncIterator[Delta]:
        # Chat messages go through the chat template in preprocessing; a completion's prompt is tokenized as is.
        prompt = T.MESSAGES if isinstance(request, ChatCompletionRequest) else T.PROMPT
        inputs = {prompt.name: bytes_tensor(request.prompt_text())}
        for name, value in request.sampling_inputs().items():
            if value is not None:
                inputs[_SAMPLING[name].name] = T.to_array(_SAMPLING[name], value)
        if request.cache_salt is not None:
            inputs[T.CACHE_SALT.name] = T.to_array(T.CACHE_SALT, request.cache_salt)
        finished, done, choices = False, 0, request.n
        outputs = _OUTPUTS + (_LOGPROB_OUTPUTS if T.LOGPROBS.name in inputs else ())
        started = time.time()
        stream = self._watched(self.client.stream(self.model, inputs, request_id=request_id,
                                                  timeout=self.timeout_s, outputs=outputs), request_id, started)
        try:
            async for out in stream:
                if T.TEXT_OUTPUT.name not in out:
                    continue   # a bare final flag
                reason = out[T.FINISH_REASON.name][0].decode()
                if reason in ("cancelled", "error"):
                    raise ServerError(f"generation ended: {reason}")
                done += bool(reason)
                finished = done == choices
                yield Delta(out[T.TEXT_OUTPUT.name][0].decode("utf-8"), out[T.TOKEN_IDS.name].tolist(), reason or None,
                            int(out[T.PROMPT_TOKENS.name][0]), int(out[T.COMPLETION_TOKENS.name][0]),
                            _logprobs(out), int(out[T.SEQUENCE_INDEX.name][0]), int(out[T.CACHED_TOKENS.name][0]))
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
                # Left early (client gone, timeout): tell llm directly (nanovl.serving.control says why).
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
            return (await control.ask_status(self.client, request_id)).lost(started)
        except TritonStreamError:
            return True   # llm cannot answer: its stub is dead
        except grpc.RpcError:
            return False  # the server itself is unreachable: the request's own call reports that

    async def stop(self, request_id: str) -> None:
        try:
            await control.send_stop(self.client, request_id)
        except Exception:   # best effort: the detokenizer's is_cancelled() poll is the second path
            log.warning("could not send a stop for %s", request_id, exc_info=True)
