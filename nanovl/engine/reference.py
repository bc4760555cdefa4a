"""The PyTorch reference engine: a background loop steps a batch that requests join and leave between steps.

Same semantics as TensorRT-LLM's executor behind the same calls: the Engine protocol (protocol.py).
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from .protocol import OnOutput
from .request import EngineOutput, EngineStats, GenerationRequest
from .runner import ModelRunner
from .sampler import Sample, Sampler
from .scheduler import Scheduler, Sequence

log = logging.getLogger(__name__)


class ReferenceEngine:
    """An Engine (protocol.py): the scheduler picks each step's sequences, the runner runs them, the sampler
    chooses their tokens; this object keeps their books and reports."""

    stats: EngineStats
    supports_choices = True

    def __init__(self, runner: ModelRunner, on_output: OnOutput, *, max_running: int = 16,
                 max_step_tokens: int = 8192, sampler: Sampler | None = None):
        self.runner = runner
        self.on_output = on_output
        self.scheduler = Scheduler(runner.blocks, max_running=max_running, max_step_tokens=max_step_tokens,
                                   vocab_size=runner.config.vocab_size)
        self.sampler = sampler or Sampler()
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()   # ("submit", request) | ("cancel", id)
        self._wake = threading.Event()
        self._stop = threading.Event()
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
        if self._thread.is_alive():   # its sequences are still the loop's: ending them here would race it
            log.error("the engine loop did not stop within 10 s; its open requests get no final output")
            return
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
                self.scheduler.add(seq)
            else:
                for seq in self.scheduler.remove(item):
                    self._finish(seq, "cancelled")
        self._update_stats()

    def step(self) -> None:
        started = time.perf_counter()
        step = self.scheduler.schedule()
        if not step.sequences:
            return
        logits = self.runner.forward(step)    # float [n_seqs, vocab], prefills first
        forwarded = time.perf_counter()
        for seq, sample in zip(step.sequences, self.sampler(logits, step.sequences)):
            self._append(seq, sample)
        self._report_progress(step.sequences)
        self._account(started, forwarded)

    def _append(self, seq: Sequence, sample: Sample) -> None:
        params = seq.request.sampling
        seq.cached = seq.length   # the forward wrote the K/V of every token the sequence had
        self.scheduler.written(seq)
        if not seq.forked:   # its prompt is in the cache now: the other choices share it from here
            self.scheduler.fork(seq)
        if sample.token in params.stop_token_ids:
            # The stop token ends the stream, neither shown nor counted in completion_tokens, as NIM reports usage.
            self._finish(seq, "stop")
            return
        seq.output_ids.append(sample.token)
        seq.pending.append(sample.token)
        if sample.logprob is not None:
            seq.pending_logprobs.append(sample.logprob)
        if len(seq.output_ids) >= params.max_tokens:
            self._finish(seq, "length")

    def _report_progress(self, seqs: list[Sequence]) -> None:
        """Reports the step's new tokens of the sequences still running; frees the finished ones' blocks."""
        for seq in seqs:
            if seq.finish_reason is None and seq.pending:
                self._report(seq)
        self.scheduler.retire_finished()
        self._update_stats()

    def _account(self, started: float, forwarded: float) -> None:
        self.stats.steps += 1
        self.stats.forward_s += forwarded - started
        self.stats.step_s += time.perf_counter() - started

    def _report(self, seq: Sequence, finish_reason: str | None = None, error: str | None = None) -> None:
        logprobs = seq.pending_logprobs if seq.request.sampling.logprobs is not None else None
        self.on_output(EngineOutput(seq.request_id, seq.pending, finish_reason, seq.prompt_len,
                                    len(seq.output_ids), error, logprobs, seq.index, seq.cached_tokens or 0))
        seq.pending, seq.pending_logprobs = [], []

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        seq.finish_reason = reason
        self._report(seq, reason, error)
        self.sampler.release(seq)
        if not seq.forked:   # ended before its prefill (cancelled, failed): its other choices end with it
            for index in range(1, seq.request.sampling.n):
                self.on_output(EngineOutput(seq.request_id, [], reason, seq.prompt_len, 0, error,
                                            sequence_index=index))

    def _update_stats(self) -> None:
        self.stats.running = len(self.scheduler.running)
        self.stats.waiting = len(self.scheduler.waiting)
        blocks = self.runner.blocks
        self.stats.kv_cache_usage = blocks.usage
        self.stats.prefix_cache_queries = blocks.queried_tokens
        self.stats.prefix_cache_hits = blocks.hit_tokens
        self.stats.prefix_cache_bytes = blocks.cached_blocks * self.runner.block_bytes
