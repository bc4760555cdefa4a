"""What the decoupled `llm` model runs, minus Triton: engine outputs -> one message per stream per send.

Streaming costs per response, not per token (tritonserver-cpu.md), so a sender thread coalesces every output
that is ready since its last send into one message per stream: the stream interval adapts to load by itself.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..checkpoint import CheckpointConfig
from ..detokenize import StreamFramer, TokenBytes
from ..errors import ClientError
from .request import DEFAULT_MAX_TOKENS, EngineOutput, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class StreamMessage:
    """One response of the llm stage. output_ids: int32 context + new ids; the first new_offset are context."""

    output_ids: np.ndarray
    new_offset: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None

    @property
    def final(self) -> bool:
        return bool(self.finish_reason) or self.error is not None


def sampling_params(config: CheckpointConfig, prompt_len: int, *, max_tokens=None, temperature=None,
                    top_p=None, top_k=None, seed=None) -> SamplingParams:
    """Request values (None = absent) -> SamplingParams with the checkpoint's stop tokens and context bound."""
    room = config.max_context - prompt_len
    if room < 1:
        raise ClientError(f"the prompt is {prompt_len} tokens; the context holds {config.max_context}",
                          param="messages", code="context_length_exceeded")
    if max_tokens is not None and max_tokens > room:
        raise ClientError(f"max_tokens {max_tokens} plus the {prompt_len}-token prompt exceeds the "
                          f"{config.max_context}-token context", param="max_tokens",
                          code="context_length_exceeded")
    values = {"max_tokens": max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, room),
              "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
    return SamplingParams(**{k: v for k, v in values.items() if v is not None},
                          stop_token_ids=config.eos_token_ids)


class GenerationService:
    """Owns the engine, the per-stream framing and the sender thread. `send(key, message)` delivers."""

    def __init__(self, engine_factory: Callable[[Callable[[EngineOutput], None]], object],
                 token_bytes: TokenBytes, send: Callable[[object, StreamMessage], None]):
        self._send = send
        self._token_bytes = token_bytes
        self._streams: dict[str, tuple[object, StreamFramer]] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.engine = engine_factory(self._outbox.put)
        self._sender = threading.Thread(target=self._send_loop, name="llm-sender", daemon=True)
        self._sender.start()

    def submit(self, stream, prompt_ids: np.ndarray, sampling: SamplingParams, prompt_table=None) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._streams[key] = (stream, StreamFramer(self._token_bytes))
        self.engine.submit(GenerationRequest(key, prompt_ids, sampling, prompt_table))
        return key

    def cancel(self, key: str) -> None:
        self.engine.cancel(key)

    def close(self) -> None:
        self.engine.shutdown()
        self._outbox.put(None)
        self._sender.join(timeout=5)

    def _send_loop(self) -> None:
        while True:
            first = self._outbox.get()
            if first is None:
                return
            batch = [first]
            while True:   # everything ready now goes out in this round
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._outbox.put(None)
                    break
                batch.append(item)
            for key, outputs in _by_stream(batch).items():
                self._deliver(key, outputs)

    def _deliver(self, key: str, outputs: list[EngineOutput]) -> None:
        with self._lock:
            entry = self._streams.get(key)
            if entry is None:
                return
            last = outputs[-1]
            if last.finished:
                del self._streams[key]
        stream, framer = entry
        tokens = [t for out in outputs for t in out.token_ids]
        framed, offset = framer.frame(tokens)
        message = StreamMessage(np.asarray(framed, np.int32), offset, last.finish_reason or "",
                                last.prompt_tokens, last.completion_tokens, last.error)
        try:
            self._send(stream, message)
        except Exception:   # a vanished client must not stop the sender for everyone else
            log.exception("sending to stream %s failed", key)


def _by_stream(batch: list[EngineOutput]) -> dict[str, list[EngineOutput]]:
    grouped: dict[str, list[EngineOutput]] = {}
    for out in batch:
        grouped.setdefault(out.request_id, []).append(out)
    return grouped
