"""The PyTorch reference engine: a background loop steps a batch that requests join and leave between steps.

Same semantics as TensorRT-LLM's executor behind the same calls: submit, outputs through a callback
(tokens since the last output, a finish reason on the last one), cancel by id.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from .request import EngineOutput, GenerationRequest
from .runner import ModelRunner
from .sampler import make_generator, sample
from .scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class ReferenceEngine:
    def __init__(self, runner: ModelRunner, on_output: Callable[[EngineOutput], None], *, max_running: int = 16):
        self.runner = runner
        self.on_output = on_output
        self.scheduler = Scheduler(max_running)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()   # ("submit", request) | ("cancel", id)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._generators: dict[int, object] = {}
        self._thread = threading.Thread(target=self._loop, name="reference-engine", daemon=True)

    def start(self) -> "ReferenceEngine":
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        self._inbox.put(("submit", request))
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        self._inbox.put(("cancel", request_id))
        self._wake.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            if self.scheduler.idle:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:   # one bad step fails the batch, never the engine
                log.exception("engine step failed")
                for seq in list(self.scheduler.running):
                    self._finish(seq, "error", error=f"engine step failed: {exc}")
                self.scheduler.retire_finished()

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                self.scheduler.add(Sequence(item))
            elif (seq := self.scheduler.remove(item)) is not None:
                self._finish(seq, "cancelled")

    def step(self) -> None:
        prefills, decodes = self.scheduler.schedule()
        for seq in prefills:
            self._generators[id(seq)] = make_generator(seq.request.sampling)
            try:
                logits = self.runner.prefill(id(seq), seq.request)
            except Exception as exc:   # a bad prompt fails its own request only
                log.exception("prefill of %s failed", seq.request_id)
                self._finish(seq, "error", error=f"prefill failed: {exc}")
                continue
            self._append(seq, logits)
        for seq in decodes:
            self._append(seq, self.runner.decode(id(seq), seq.output_ids[-1]))
        for seq in prefills + decodes:
            if seq.finish_reason is None and seq.pending:
                self._report(seq)
        for seq in self.scheduler.retire_finished():
            self._release(seq)

    def _append(self, seq: Sequence, logits) -> None:
        params = seq.request.sampling
        token = sample(logits, params, self._generators[id(seq)])
        seq.output_ids.append(token)
        if token in params.stop_token_ids:
            self._finish(seq, "stop")   # the stop token is counted, not shown
        else:
            seq.pending.append(token)
            if len(seq.output_ids) >= params.max_tokens:
                self._finish(seq, "length")

    def _report(self, seq: Sequence, finish_reason: str | None = None, error: str | None = None) -> None:
        self.on_output(EngineOutput(seq.request_id, seq.pending, finish_reason, seq.prompt_len,
                                    len(seq.output_ids), error))
        seq.pending = []

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        seq.finish_reason = reason
        self._report(seq, reason, error)
        if reason in ("cancelled", "error"):
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        self.runner.release(id(seq))
        self._generators.pop(id(seq), None)
