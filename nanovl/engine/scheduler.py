"""Which sequences run in the next engine step. Pure Python: no torch, unit-tested on its own.

In-flight batching as TensorRT-LLM does it: every step decodes one token for each running sequence and
admits waiting ones (prefill) while the running batch, the per-step token budget and the KV cache allow.
When a running sequence cannot get a KV block, the newest one is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed from its prompt and the tokens it already produced.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from .blocks import BlockManager
from .request import GenerationRequest

_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    key: int = field(default_factory=lambda: next(_ids))
    cached: int = 0                     # tokens whose K/V are in the cache
    pending: list[int] = field(default_factory=list)          # produced, not yet reported
    pending_logprobs: list = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def length(self) -> int:
        return self.prompt_len + len(self.output_ids)


@dataclass
class Step:
    prefills: list[Sequence]    # run their uncached tokens (prompt, or prompt + output after preemption)
    decodes: list[Sequence]     # run their last token

    @property
    def sequences(self) -> list[Sequence]:
        return self.prefills + self.decodes


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_running: int, max_step_tokens: int):
        self.blocks = blocks
        self.max_running = max_running
        self.max_step_tokens = max_step_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> Step:
        decodes = self._reserve_decodes()
        budget = self.max_step_tokens - len(decodes)
        prefills = []
        while self.waiting and len(self.running) < self.max_running:
            seq = self.waiting[0]
            need = seq.length - seq.cached
            # A prompt larger than the whole budget still runs, alone in its step.
            if (need > budget and (prefills or decodes)) or not self.blocks.can_hold(seq.key, seq.length + 1):
                break
            self.waiting.popleft()
            self.blocks.ensure(seq.key, seq.length + 1)
            self.running.append(seq)
            prefills.append(seq)
            budget -= need
        return Step(prefills, decodes)

    def _reserve_decodes(self) -> list[Sequence]:
        decodes = []
        for seq in list(self.running):
            if seq not in self.running:
                continue   # preempted below
            while not self.blocks.can_hold(seq.key, seq.length + 1):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.ensure(seq.key, seq.length + 1)
                decodes.append(seq)
        return decodes

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.key)
        seq.cached = 0
        self.waiting.appendleft(seq)

    def remove(self, request_id: str) -> Sequence | None:
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self.blocks.free(seq.key)
                    return seq
        return None

    def retire_finished(self) -> list[Sequence]:
        done = [seq for seq in self.running if seq.finish_reason is not None]
        for seq in done:
            self.running.remove(seq)
            self.blocks.free(seq.key)
        return done

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting
