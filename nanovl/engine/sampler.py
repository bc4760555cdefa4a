"""Next tokens for a step's batch: logits processors on the rows that need them, then each row's choice.

Per row, each step, the cheapest path that gives its answer:
- plain greedy (greedy, no processor applies, no logprobs): the batched argmax, which never leaves the device;
- every other row is gathered once; rows asking for logprobs take them from the model's own distribution
  first (as vLLM reports them); the processors (processors.py) run batch-wise on the rows each applies to;
  greedy rows then take the argmax; sampled rows get their temperature, top-k and top-p batch-wise on the
  device, and their probabilities go to the host in one copy to be drawn with their request's own generator.
A generator per request makes a seed give the same tokens whatever else is in the batch; keeping it on the host
makes the draws the same on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .processors import PROCESSORS, LogitsProcessor, per_row
from .request import SamplingParams, TokenLogprob
from .scheduler import Sequence


@dataclass
class Sample:
    token: int
    logprob: TokenLogprob | None = None   # when the request asks for logprobs


def make_generator(params: SamplingParams, index: int = 0) -> torch.Generator:
    """The generator of choice `index` of a request (SamplingParams.choice_seed)."""
    generator = torch.Generator()
    seed = params.choice_seed(index)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


def probabilities(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """logits: float [d, vocab] of rows that sample, processors applied -> probabilities float [d, vocab] under
    each row's temperature, top-k and top-p, batch-wise on the logits' device. Row by row on the host they were
    the suspect when sampled decode measured 10x slower than greedy at 64 clients on a GPU: over a 128k
    vocabulary they cost 4 to 18 ms a row on a CPU core, most of it top-p's sort. On the CPU each row's values
    are bitwise those the per-row code gave it alone (tests/engine/test_sampler.py); not yet measured on a GPU.
    """
    logits = logits / per_row([p.temperature for p in params], logits)
    cut = [j for j, p in enumerate(params) if p.top_k]
    if cut:
        index, k = _rows(cut, logits), [min(params[j].top_k, logits.shape[-1]) for j in cut]
        picked = logits[index]
        kth = torch.topk(picked, max(k)).values.gather(1, _rows(k, logits)[:, None] - 1)   # [c, 1]
        logits[index] = picked.masked_fill(picked < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    nucleus = [j for j, p in enumerate(params) if p.top_p < 1.0]
    if nucleus:
        index = _rows(nucleus, probs)
        sorted_probs, order = torch.sort(probs[index], dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        top_p = per_row([params[j].top_p for j in nucleus], probs)
        sorted_probs[torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p] = 0.0
        probs[index] = torch.zeros_like(sorted_probs).scatter_(1, order, sorted_probs)
    return probs


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    """probs: float [d, vocab] -> a token per row, each drawn on the host with its own generator, so a seed
    draws the same whatever the batch and the device. (One host copy; the draw itself is a pass over the row.)"""
    return [int(torch.multinomial(row, 1, generator=g)) for row, g in zip(probs.cpu(), generators)]


def _rows(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=like.device)


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
            gathered = self._gathered(logits[_rows(rows, logits)], [seqs[i] for i in rows],
                                      [wants[i] for i in rows])
            for i, sample in zip(rows, gathered):
                samples[i] = sample
        return samples

    def _gathered(self, logits: torch.Tensor, seqs: list[Sequence],
                  wants: list[list[LogitsProcessor]]) -> list[Sample]:
        """logits: float [m, vocab], a copy of the rows that need more than an argmax, which the processors
        may write; wants[j]: the processors that apply to seqs[j]."""
        asked = [j for j, seq in enumerate(seqs) if seq.request.sampling.logprobs is not None]
        model_logprobs = torch.log_softmax(logits[_rows(asked, logits)], dim=-1) if asked else None
        self._process(logits, seqs, wants)
        drawn = [j for j, seq in enumerate(seqs) if not seq.request.sampling.greedy]
        # The argmax only where it is the answer: a drawn row's would be thrown away (a pass over the vocabulary).
        chosen = [j for j, seq in enumerate(seqs) if seq.request.sampling.greedy]
        tokens = [0] * len(seqs)
        if chosen:
            picked = logits if not drawn else logits[_rows(chosen, logits)]
            for j, token in zip(chosen, picked.argmax(dim=-1).tolist()):
                tokens[j] = token
        if drawn:
            probs = probabilities(logits[_rows(drawn, logits)], [seqs[j].request.sampling for j in drawn])
            for j, token in zip(drawn, draw(probs, [self._generator(seqs[j]) for j in drawn])):
                tokens[j] = token
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
                index = _rows(at, logits)
                rows = logits[index]
                out = processor(rows, [seqs[j] for j in at])
                logits[index] = rows if out is None else out

    def _generator(self, seq: Sequence) -> torch.Generator:
        if seq.key not in self._generators:
            self._generators[seq.key] = make_generator(seq.request.sampling, seq.index)
        return self._generators[seq.key]
