"""The seam between the llm stage and an engine: what the PyTorch reference engine and TensorRT-LLM's Executor
both keep, so that the stage, the service and the tests hold an `Engine` and never ask which one it is."""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from .request import EngineOutput, EngineStats, GenerationRequest

OnOutput = Callable[[EngineOutput], None]
"""Given to an engine at construction. Called from the engine's thread (or from the caller's, for a request refused
at submit) while the engine waits: it should hand the output on (to a queue) and return."""


@runtime_checkable
class Engine(Protocol):
    """A running generation engine. Every request submitted gets outputs through the engine's `on_output`:

    - each output carries the tokens produced since the request's previous output (possibly none on the
      last), with `prompt_tokens` and the running `completion_tokens`;
    - with n > 1 choices, each output is one choice's (`sequence_index`), and all of the above holds per choice.
      An engine that honours n > 1 says so with a class attribute `supports_choices = True`; the llm stage refuses
      n > 1 for one without it (an optional member, so an engine written before it still is an Engine);
    - exactly one output per request (per choice) is final: its `finish_reason` is set ("stop", "length", "cancelled" or
      "error", with `error` saying why), and nothing follows it. A stop token ends the request with "stop"; it
      is counted in `completion_tokens` but not shown in `token_ids`;
    - a failure that belongs to one request (a prompt too large for the cache, a refused enqueue) ends that
      request with "error" and leaves the others running;
    - with n > 1 choices each of the request's outputs carries its `sequence_index`, and the rule above holds
      per choice: each choice gets exactly one final output.
    """

    stats: EngineStats
    """Gauges for the stage's metrics (running, waiting, KV-cache usage, step counters); read from any
    thread, updated by the engine, never reset."""

    def start(self) -> Engine:
        """Starts the engine's thread; returns the engine itself, so `Engine(...).start()` reads as one step."""

    def submit(self, request: GenerationRequest) -> None:
        """Queues a request and returns at once; its outputs come through `on_output`. Request ids are the
        caller's and must be unique among the requests still open. Settings this engine cannot honour raise
        ClientError here (naming the field; the stage answers 400) and no output follows."""

    def cancel(self, request_id: str) -> None:
        """Ends an open request soon (within an engine step) with a final "cancelled" output and frees its
        slot and cache. An id that is unknown or already finished is a no-op: no output, no error."""

    def shutdown(self) -> None:
        """Stops the engine; every request still open (running or waiting) gets its final output with
        finish_reason "error" before this returns (unless the engine's thread is stuck past its join timeout,
        which is logged). Nothing is submitted after."""
