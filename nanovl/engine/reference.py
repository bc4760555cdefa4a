"""The PyTorch reference engine: a background loop steps a batch that requests join and leave between steps.

Same semantics as TensorRT-LLM's executor behind the same calls: submit, outputs through a callback
(tokens since the last output, a finish reason on the last one), cancel by id.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from .request import EngineOutput, EngineStats, GenerationRequest
from .runner import ModelRunner
from .sampler import apply_penalties, choose, logprob_of, make_generator
from .scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class ReferenceEngine:
    def __init__(self, runner: ModelRunner, on_output: Callable[[EngineOutput], None], *, max_running: int = 16,
                 max_step_tokens: int = 8192):
        self.runner = runner
        self.on_output = on_output
        self.scheduler = Scheduler(runner.blocks, max_running=max_running, max_step_tokens=max_step_tokens)
        self.stats = EngineStats()
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
        if not self._thread.is_alive():   # the loop is over: its sequences are ours to end
            self._drain_inbox()
            for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
                self._finish(seq, "error", error="the llm engine shut down")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            if self.scheduler.idle:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:   # one bad step fails its batch, never the engine
                log.exception("engine step failed")
                for seq in list(self.scheduler.running):
                    self._finish(seq, "error", error=f"engine step failed: {exc}")
                self.scheduler.retire_finished()

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                seq = Sequence(item)
                blocks = self.runner.blocks
                if blocks.blocks_for(seq.prompt_len + 1) > blocks.num_blocks:   # would wait forever
                    self._finish(seq, "error", error=f"prompt of {seq.prompt_len} tokens exceeds the KV cache")
                    continue
                self._generators[seq.key] = make_generator(item.sampling)
                self.scheduler.add(seq)
            elif (seq := self.scheduler.remove(item)) is not None:
                self._finish(seq, "cancelled")
        self._update_stats()

    def step(self) -> None:
        started = time.perf_counter()
        step = self.scheduler.schedule()
        if not step.sequences:
            return
        logits = self.runner.forward(step)    # [n_seqs, vocab], prefills first
        forward_done = time.perf_counter()
        # One argmax for every plain greedy row instead of one per sequence; the rows that sample go to the
        # host in one copy, where their generators live (a seed then gives the same draws on any device).
        best = logits.argmax(dim=-1).tolist()
        sampled = [i for i, seq in enumerate(step.sequences) if not self._plain_greedy(seq)]
        host = dict(zip(sampled, logits[sampled].cpu())) if sampled else {}
        for i, (seq, top) in enumerate(zip(step.sequences, best)):
            seq.cached = seq.length
            self._append(seq, host.get(i), top)
        for seq in step.sequences:
            if seq.finish_reason is None and seq.pending:
                self._report(seq)
        for seq in self.scheduler.retire_finished():
            self._generators.pop(seq.key, None)
        self._update_stats()
        self.stats.steps += 1
        self.stats.forward_s += forward_done - started
        self.stats.step_s += time.perf_counter() - started

    @staticmethod
    def _holds_back_stops(seq: Sequence) -> bool:
        params = seq.request.sampling
        return bool(params.stop_token_ids) and len(seq.output_ids) < params.min_tokens

    def _plain_greedy(self, seq: Sequence) -> bool:
        """The argmax is the token and no logits are needed: greedy, no penalties, no stop ids held back by
        min_tokens, no logprobs."""
        params = seq.request.sampling
        return params.greedy and not params.penalized and params.logprobs is None and not self._holds_back_stops(seq)

    def _append(self, seq: Sequence, raw, argmax: int) -> None:
        """raw: the sequence's float [vocab] logits on the host, or None for a plain greedy one."""
        params = seq.request.sampling
        if raw is None:
            token = argmax
        else:
            logits = apply_penalties(raw, params, seq.request.prompt_ids, seq.output_ids) if params.penalized else raw
            if self._holds_back_stops(seq):
                logits = logits.clone()
                logits[list(params.stop_token_ids)] = float("-inf")
            token = choose(logits, params, self._generators[seq.key])
        seq.output_ids.append(token)
        if token in params.stop_token_ids:
            self._finish(seq, "stop")   # the stop token is counted, not shown
            return
        seq.pending.append(token)
        if params.logprobs is not None:
            seq.pending_logprobs.append(logprob_of(raw, token, params.logprobs))
        if len(seq.output_ids) >= params.max_tokens:
            self._finish(seq, "length")

    def _report(self, seq: Sequence, finish_reason: str | None = None, error: str | None = None) -> None:
        logprobs = seq.pending_logprobs if seq.request.sampling.logprobs is not None else None
        self.on_output(EngineOutput(seq.request_id, seq.pending, finish_reason, seq.prompt_len,
                                    len(seq.output_ids), error, logprobs))
        seq.pending, seq.pending_logprobs = [], []

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        seq.finish_reason = reason
        self._report(seq, reason, error)
        if reason in ("cancelled", "error"):
            self._generators.pop(seq.key, None)

    def _update_stats(self) -> None:
        self.stats.running = len(self.scheduler.running)
        self.stats.waiting = len(self.scheduler.waiting)
        self.stats.kv_cache_usage = self.runner.blocks.usage
