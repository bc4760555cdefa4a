"""What the decoupled `llm` model runs, minus Triton: engine outputs -> one message per stream per send.

Streaming costs per response, not per token (tritonserver-cpu.md), so a sender thread coalesces every output
that is ready since its last send into one message per stream: the stream interval adapts to load by itself.
A request with n choices is one stream whose messages each carry one choice's tokens (`sequence_index`); each
choice has its own framing and stop strings, and the stream ends with the last choice to finish.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.detokenize import StreamFramer, TokenBytes
from ..core.errors import ClientError
from ..core.stop import StopMatcher
from ..engine.protocol import Engine
from ..engine.request import EngineOutput, GenerationRequest, SamplingParams, TokenLogprob

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
    trim_bytes: int = 0                               # drop from the end of the new tokens' text (stop string)
    logprobs: list[TokenLogprob] | None = None        # one per new token, when asked for
    sequence_index: int = 0                           # the choice these tokens belong to
    cached_tokens: int = 0                            # prompt tokens the prefix cache served
    last: bool | None = None                          # the stream's last message (None: this choice's end)

    @property
    def final(self) -> bool:
        """Whether the stream ends with this message (every choice has finished, or an error)."""
        if self.error is not None:
            return True
        return bool(self.finish_reason) if self.last is None else self.last


@dataclass
class _Choice:
    framer: StreamFramer
    matcher: StopMatcher
    done: bool = False


@dataclass
class _Stream:
    target: object                  # what `send` delivers to (a Triton response sender)
    choices: list[_Choice]
    min_tokens: int
    label: str = ""

    @property
    def open_choices(self) -> int:
        return sum(not c.done for c in self.choices)


class GenerationService:
    """Owns the engine, the per-stream framing and the sender thread. `send(key, message)` delivers."""

    def __init__(self, engine_factory: Callable[[Callable[[EngineOutput], None]], Engine],
                 token_bytes: TokenBytes, send: Callable[[object, StreamMessage], None], *,
                 stream_interval_s: float = 0.0):
        self._send = send
        self._interval = stream_interval_s
        self._token_bytes = token_bytes
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.engine = engine_factory(self._outbox.put)
        self._sender = threading.Thread(target=self._send_loop, name="llm-sender", daemon=True)
        self._sender.start()

    def submit(self, stream, prompt_ids: np.ndarray, sampling: SamplingParams, prompt_table=None,
               label: str = "", *, prompt_extra_ids: np.ndarray | None = None, cache_salt: str | None = None) -> str:
        """Starts a generation streamed to `stream`; `label` (the client's request id) is what a stop names."""
        if sampling.n > 1 and not getattr(self.engine, "supports_choices", False):
            raise ClientError("n > 1 is not available with this llm engine", param="n")
        key = uuid.uuid4().hex
        choices = [_Choice(StreamFramer(self._token_bytes), StopMatcher.create(self._token_bytes, sampling.stop))
                   for _ in range(sampling.n)]
        with self._lock:
            self._streams[key] = _Stream(stream, choices, sampling.min_tokens, label)
        try:
            self.engine.submit(GenerationRequest(key, prompt_ids, sampling, prompt_table,
                                                 prompt_extra_ids=prompt_extra_ids, cache_salt=cache_salt))
        except Exception:   # refused at once (a ClientError the caller answers): no stream to keep
            with self._lock:
                self._streams.pop(key, None)
            raise
        return key

    def cancel_request(self, label: str) -> int:
        """Stops every stream submitted with this label (empty labels are never matched). -> how many."""
        with self._lock:
            keys = [key for key, s in self._streams.items() if label and s.label == label]
        for key in keys:
            self.engine.cancel(key)
        return len(keys)

    def knows(self, label: str) -> bool:
        """Whether a stream submitted with this label is still generating or waiting."""
        with self._lock:
            return bool(label) and any(s.label == label for s in self._streams.values())

    def cancel_stream(self, target) -> None:
        with self._lock:
            keys = [key for key, s in self._streams.items() if s.target is target]
        for key in keys:
            self.engine.cancel(key)

    def close(self) -> None:
        self.engine.shutdown()
        self._outbox.put(None)
        self._sender.join(timeout=5)

    def _send_loop(self) -> None:
        """Streams get at most one response per stream interval, carrying every token made meanwhile:
        responses, not tokens, are what streaming costs (tritonserver-cpu.md). A stream's first and last
        responses go out at once, so pacing costs neither time to first token nor end-to-end latency."""
        pending: dict[str, list[EngineOutput]] = {}
        last_sent: dict[str, float] = {}
        closing = False
        while not (closing and not pending):
            timeout = None
            if pending:
                due = min(last_sent.get(key, float("-inf")) + self._interval for key in pending)
                timeout = max(0.0, due - time.monotonic())
            for item in self._take(timeout):
                if item is None:
                    closing = True
                else:
                    pending.setdefault((item.request_id, item.sequence_index), []).append(item)
            now = time.monotonic()
            for key in list(pending):
                outputs = pending[key]
                final = outputs[-1].finished
                if final or closing or key not in last_sent or now - last_sent[key] >= self._interval:
                    del pending[key]
                    self._deliver(key, outputs)
                    if final:
                        last_sent.pop(key, None)
                    else:
                        last_sent[key] = now

    def _take(self, timeout: float | None) -> list:
        """Everything in the outbox, waiting up to `timeout` (None: forever) for the first item."""
        try:
            items = [self._outbox.get(timeout=timeout) if timeout != 0 else self._outbox.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._outbox.get_nowait())
            except queue.Empty:
                return items

    def _deliver(self, pending_key: tuple[str, int], outputs: list[EngineOutput]) -> None:
        key, index = pending_key
        with self._lock:
            stream = self._streams.get(key)
        if stream is None or stream.choices[index].done:
            return   # already finished (a stop string), or never ours
        choice = stream.choices[index]
        last = outputs[-1]
        tokens = [t for out in outputs for t in out.token_ids]
        extras = [lp for out in outputs for lp in (out.logprobs or [None] * len(out.token_ids))]
        final = last.finished
        # No stop strings before min_tokens (as vLLM).
        released = choice.matcher.feed(tokens, extras, final=final,
                                       match_stops=last.completion_tokens >= stream.min_tokens)
        reason = last.finish_reason or ""
        if released.stopped:
            reason, final = "stop", True
        stream_done = final and self._end_choice(key, stream, choice, last.error is not None, released.stopped)
        if not final and not released.tokens:
            return   # everything held back (may start a stop string): nothing to send yet
        framed, offset = choice.framer.frame(released.tokens)
        logprobs = released.extras if extras and extras[0] is not None else None
        message = StreamMessage(np.asarray(framed, np.int32), offset, reason, last.prompt_tokens,
                                last.completion_tokens, last.error, released.trim_bytes, logprobs,
                                index, last.cached_tokens, stream_done)
        try:
            self._send(stream.target, message)
        except Exception as exc:   # fail this stream alone, never the sender for everyone else
            log.exception("sending to stream %s failed", key)
            self._fail(key, stream, f"sending the response failed: {exc}")

    def _end_choice(self, key: str, stream: _Stream, choice: _Choice, error: bool, stopped: bool) -> bool:
        """Marks a choice (all of them, on an error) ended. -> whether that ends the stream."""
        with self._lock:
            for other in (stream.choices if error else [choice]):
                other.done = True
            stream_done = stream.open_choices == 0
            if stream_done:
                self._streams.pop(key, None)
        # A stop string frees the slot now, and so does the end of a request's last choice while one that met a
        # stop string decodes on (the engine cancels whole requests); their 'cancelled' outputs find no stream.
        if stream_done and (stopped or len(stream.choices) > 1):
            self.engine.cancel(key)
        return stream_done

    def _fail(self, key: str, stream: _Stream, error: str) -> None:
        with self._lock:
            self._streams.pop(key, None)
        self.engine.cancel(key)
        try:
            self._send(stream.target, StreamMessage(np.zeros(0, np.int32), 0, "error", 0, 0, error))
        except Exception:
            log.exception("stream %s is gone", key)


