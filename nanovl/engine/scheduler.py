"""Which sequences run in the next engine step. Pure Python: no torch, unit-tested on its own.

In-flight batching as TensorRT-LLM does it: every step decodes one token for each running sequence and
admits waiting ones (prefill) while the running batch, the per-step token budget and the KV cache allow.
When a running sequence cannot get a KV block, the newest one is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed from its prompt and the tokens it already produced.

Prefix caching: a sequence admitted without blocks first takes the cached blocks its prefix hashes to
(blocks.py, prefix.py) and runs only the rest; the last token always runs, so there is a logit to sample from.
Full blocks are registered as soon as their KV is written (`written`), decode blocks too, so a conversation's
next turn finds the previous answer cached.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .blocks import BlockManager
from .prefix import block_hashes, prompt_extra_ids
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
    index: int = 0                      # which of the request's n choices
    forked: bool = False                # its n - 1 other choices exist (always true for n = 1 and for them)
    hashes: list[bytes] = field(default_factory=list)        # chained hashes of its full blocks so far
    extra_ids: np.ndarray | None = None                      # int64 [prompt_len], see prefix.py
    cached_tokens: int | None = None    # prompt tokens the prefix cache served when first admitted
    registered: int = 0                 # its first blocks offered to the prefix cache (since its table began)

    def __post_init__(self):
        self.forked = self.forked or self.request.sampling.n == 1

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def length(self) -> int:
        return self.prompt_len + len(self.output_ids)

    def tokens(self) -> np.ndarray:
        """int64 [length]: prompt and output ids."""
        return np.concatenate([np.asarray(self.request.prompt_ids, np.int64), np.asarray(self.output_ids, np.int64)])


@dataclass
class Step:
    prefills: list[Sequence]    # run their uncached tokens (prompt, or prompt + output after preemption)
    decodes: list[Sequence]     # run their last token

    @property
    def sequences(self) -> list[Sequence]:
        return self.prefills + self.decodes


class Scheduler:
    def __init__(self, blocks: BlockManager, *, max_running: int, max_step_tokens: int, vocab_size: int = 0):
        self.blocks = blocks
        self.vocab_size = vocab_size   # ids at or past it are image rows (their extra ids key them)
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
            fresh = seq.key not in self.blocks.tables   # not a forked choice, which holds its share already
            if fresh:
                self._lookup(seq)
            need = seq.length - seq.cached
            # A prompt larger than the whole budget still runs, alone in its step.
            if (need > budget and (prefills or decodes)) or not self.blocks.can_hold(seq.key, seq.length + 1):
                if fresh:   # a waiting sequence holds no cached blocks: the next try looks up again
                    self.blocks.free(seq.key)
                    seq.cached = 0
                break
            if seq.cached_tokens is None:
                seq.cached_tokens = seq.cached
                self.blocks.count_lookup(seq.prompt_len, seq.cached)
            self.waiting.popleft()
            self.blocks.ensure(seq.key, seq.length + 1)
            self.running.append(seq)
            prefills.append(seq)
            budget -= need
        return Step(prefills, decodes)

    def _lookup(self, seq: Sequence) -> None:
        """Takes the cached blocks of the sequence's prefix, leaving at least its last token to run."""
        if self.blocks.caching:
            self._extend_hashes(seq, seq.length - 1)
            seq.cached = self.blocks.match(seq.key, seq.hashes) * self.blocks.block_size

    def _extend_hashes(self, seq: Sequence, num_tokens: int) -> None:
        """seq.hashes covers every full block of its first num_tokens tokens."""
        if len(seq.hashes) < num_tokens // self.blocks.block_size:
            if seq.extra_ids is None:
                seq.extra_ids = prompt_extra_ids(seq.request, self.vocab_size)
            tokens = seq.tokens()[:num_tokens]
            extra = np.zeros(len(tokens), np.int64)
            extra[:seq.prompt_len] = seq.extra_ids[:len(tokens)]
            seq.hashes = block_hashes(tokens, extra, self.blocks.block_size, salt=seq.request.cache_salt,
                                      previous=seq.hashes)

    def written(self, seq: Sequence) -> None:
        """The forward wrote the KV of the sequence's first seq.cached tokens: its full blocks become cached."""
        full = seq.cached // self.blocks.block_size
        if self.blocks.caching and seq.key in self.blocks.tables and full > seq.registered:
            self._extend_hashes(seq, seq.cached)
            self.blocks.register(seq.key, seq.hashes[seq.registered:full], start=seq.registered)
            seq.registered = full

    def fork(self, parent: Sequence) -> list[Sequence]:
        """The parent's n - 1 other choices, right after its prefill: each shares the prompt's full blocks and
        recomputes the rest of the prompt (under a block, plus the last token for its own first logit), first
        in the queue."""
        parent.forked = True
        size = self.blocks.block_size
        shared = (parent.prompt_len - 1) // size * size
        children = []
        for index in range(1, parent.request.sampling.n):
            child = Sequence(parent.request, index=index, forked=True, hashes=list(parent.hashes[:shared // size]),
                             extra_ids=parent.extra_ids, cached_tokens=parent.cached_tokens, cached=shared)
            self.blocks.fork(parent.key, child.key, shared)
            children.append(child)
        self.waiting.extendleft(reversed(children))
        return children

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
        seq.cached = seq.registered = 0
        self.waiting.appendleft(seq)

    def remove(self, request_id: str) -> list[Sequence]:
        """Takes every choice of the request out of the batch and the queue, freeing their blocks."""
        removed = []
        for queue in (self.running, self.waiting):
            for seq in [s for s in queue if s.request_id == request_id]:
                queue.remove(seq)
                self.blocks.free(seq.key)
                removed.append(seq)
        return removed

    def retire_finished(self) -> list[Sequence]:
        done = [seq for seq in self.running if seq.finish_reason is not None]
        for seq in done:
            self.running.remove(seq)
            self.blocks.free(seq.key)
        return done

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting
