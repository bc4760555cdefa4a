"""Next tokens for a batch of sequences, each with its own settings and its own RNG.

A per-request generator makes the same seed give the same text whatever else is in the batch.
"""
from __future__ import annotations

import torch

from .request import SamplingParams, TokenLogprob


def make_generator(params: SamplingParams) -> torch.Generator:
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids, output_ids: list[int]) -> torch.Tensor:
    """logits: float [vocab] (a copy is returned). Repetition as HF/vLLM over prompt + output; frequency and
    presence as OpenAI over the output only."""
    logits = logits.clone()
    vocab = logits.numel()
    if params.repetition_penalty != 1.0:
        seen = torch.as_tensor(list(prompt_ids) + output_ids, dtype=torch.long)
        seen = torch.unique(seen[seen < vocab])
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if output_ids and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=vocab)[:vocab].to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """logits: float [vocab], penalties applied -> token id."""
    if params.greedy:
        return int(torch.argmax(logits))
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


def logprob_of(raw_logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """Log-probabilities of the model's own distribution (before sampling settings), as vLLM reports them."""
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    best = torch.topk(logprobs, top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
    return TokenLogprob(float(logprobs[token]), pairs)
