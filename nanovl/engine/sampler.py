"""Next tokens for a step's batch: logits processors on the rows that need them, then each row's choice.

Per row, each step, the cheapest path that gives its answer:
- plain greedy (greedy, no processor applies, no logprobs): the batched argmax, which never leaves the device;
- every other row is gathered once; rows asking for logprobs take them from the model's own distribution
  first (as vLLM reports them); the processors (processors.py) run batch-wise on the rows each applies to;
  greedy rows then take the argmax, and sampled rows go to the host in one copy to be drawn with their
  request's own torch.Generator.
A generator per request makes a seed give the same tokens whatever else is in the batch; keeping it on the host
makes the draws the same on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .processors import PROCESSORS, LogitsProcessor
from .request import SamplingParams, TokenLogprob
from .scheduler import Sequence


@dataclass
class Sample:
    token: int
    logprob: TokenLogprob | None = None   # when the request asks for logprobs


def make_generator(params: SamplingParams) -> torch.Generator:
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """logits: float [vocab] on the host, processors applied -> a token drawn under temperature, top-k, top-p."""
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        sorted_probs[torch.cumsum(sorted_probs, 0) - sorted_probs >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprobs(logprobs: torch.Tensor, tokens: list[int], tops: list[int]) -> list[TokenLogprob]:
    """logprobs: float [k, vocab], log-softmax of k rows; row i's chosen token and its tops[i] best -> one
    TokenLogprob per row, read back to the host in one go."""
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0].tolist()
    best = torch.topk(logprobs, min(max(tops), logprobs.shape[-1]))
    ids, values = best.indices.tolist(), best.values.tolist()
    return [TokenLogprob(value, list(zip(i[:top], v[:top]))) for value, i, v, top in zip(chosen, ids, values, tops)]


def _argmax_answers(params: SamplingParams) -> bool:
    """Whether the argmax of the row, as the model gave it, is all these settings need (unless a processor
    applies)."""
    return params.greedy and params.logprobs is None


class Sampler:
    """Chooses the next token of every sequence in a step; holds the per-request generators."""

    def __init__(self, processors: Iterable[LogitsProcessor] = PROCESSORS):
        self.processors = tuple(processors)
        self._generators: dict[int, torch.Generator] = {}

    def release(self, seq: Sequence) -> None:
        """Forgets the sequence's generator: call once it has finished."""
        self._generators.pop(seq.key, None)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[Sample]:
        """logits: float [n, vocab] on the forward's device, row i for seqs[i] -> one Sample per sequence."""
        wants = [[p for p in self.processors if p.applies(seq)] for seq in seqs]
        rows = [i for i, seq in enumerate(seqs) if wants[i] or not _argmax_answers(seq.request.sampling)]
        samples = [Sample(token) for token in logits.argmax(dim=-1).tolist()]   # each plain greedy row's answer
        if rows:
            gathered = self._gathered(logits[self._index(rows, logits)], [seqs[i] for i in rows],
                                      [wants[i] for i in rows])
            for i, sample in zip(rows, gathered):
                samples[i] = sample
        return samples

    def _gathered(self, logits: torch.Tensor, seqs: list[Sequence],
                  wants: list[list[LogitsProcessor]]) -> list[Sample]:
        """logits: float [m, vocab], a copy of the rows that need more than an argmax, which the processors
        may write; wants[j]: the processors that apply to seqs[j]."""
        asked = [j for j, seq in enumerate(seqs) if seq.request.sampling.logprobs is not None]
        model_logprobs = torch.log_softmax(logits[self._index(asked, logits)], dim=-1) if asked else None
        self._process(logits, seqs, wants)
        tokens = logits.argmax(dim=-1).tolist()
        drawn = [j for j, seq in enumerate(seqs) if not seq.request.sampling.greedy]
        if drawn:   # one copy to the host, where the generators are
            for j, row in zip(drawn, logits[self._index(drawn, logits)].cpu()):
                tokens[j] = draw(row, seqs[j].request.sampling, self._generator(seqs[j]))
        samples = [Sample(token) for token in tokens]
        if asked:
            tops = [seqs[j].request.sampling.logprobs for j in asked]
            for j, logprob in zip(asked, token_logprobs(model_logprobs, [tokens[j] for j in asked], tops)):
                samples[j].logprob = logprob
        return samples

    def _process(self, logits: torch.Tensor, seqs: list[Sequence], wants: list[list[LogitsProcessor]]) -> None:
        """Runs each processor, in order, once on the batch of rows it applies to; writes their result back."""
        for processor in self.processors:
            at = [j for j, want in enumerate(wants) if processor in want]
            if at:
                index = self._index(at, logits)
                rows = logits[index]
                out = processor(rows, [seqs[j] for j in at])
                logits[index] = rows if out is None else out

    @staticmethod
    def _index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=like.device)

    def _generator(self, seq: Sequence) -> torch.Generator:
        if seq.key not in self._generators:
            self._generators[seq.key] = make_generator(seq.request.sampling)
        return self._generators[seq.key]
