"""Logits processors: what changes a row's logits between the forward and the choice of its token.

Each one works on the batch of rows it applies to, with tensor ops on the forward's device, so a step with 64
penalized rows costs a few batched ops, not 64 loops. Adding one (a guided-decoding bitmask, logit_bias) is one
class with `applies` and `__call__`, and its instance added to PROCESSORS (or to the `processors` a Sampler is
built with); the sampler does the gathering, the ordering and the fast path for rows no processor wants.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .scheduler import Sequence


class LogitsProcessor(Protocol):
    def applies(self, seq: Sequence) -> bool:
        """Whether this step's row of `seq` needs this processor; asked every step (min_tokens stops applying
        once enough tokens are out). A row no processor applies to and that samples greedily without logprobs
        never leaves the device."""

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor | None:
        """logits: float [m, vocab], one row per sequence of `seqs` (only those it applies to), on the forward's
        device. Modifies them in place and returns None, or returns new float [m, vocab] logits."""


def per_row(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """float [m, 1] of one setting per row, in the dtype of `like`: the same float a Python scalar becomes, so
    each row's arithmetic is what it would be with its own scalar settings."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]


def _cells(rows: list, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token id) long tensors of every id in rows[i] (a list or array of ids), for indexing
    [m, vocab]; ids outside the vocabulary (image rows of the prompt) are left out. numpy, not a Python loop:
    a repetition penalty reads every prompt id of every row, each step."""
    ids = [np.asarray(row, dtype=np.int64).reshape(-1) for row in rows]
    row_of = np.repeat(np.arange(len(ids)), [len(row) for row in ids])
    token = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    keep = (token >= 0) & (token < like.shape[-1])
    return (torch.from_numpy(row_of[keep]).to(like.device), torch.from_numpy(token[keep]).to(like.device))


def _token_mask(rows: list, like: torch.Tensor) -> torch.Tensor:
    """bool [m, vocab]: True where row i's token ids include the column."""
    mask = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    mask[_cells(rows, like)] = True
    return mask


def _token_counts(rows: list, like: torch.Tensor) -> torch.Tensor:
    """float [m, vocab]: how often each token id appears in row i's ids."""
    counts = torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    index = _cells(rows, like)
    counts.index_put_(index, torch.ones(len(index[0]), dtype=like.dtype, device=like.device), accumulate=True)
    return counts


class RepetitionPenalty:
    """HF / vLLM: a seen token's logit (prompt or output) is divided by the penalty when positive, multiplied
    when negative."""

    def applies(self, seq: Sequence) -> bool:
        return seq.request.sampling.repetition_penalty != 1.0

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        seen = _token_mask([np.concatenate([seq.request.prompt_ids, np.asarray(seq.output_ids, np.int64)])
                            for seq in seqs], logits)
        penalty = per_row([seq.request.sampling.repetition_penalty for seq in seqs], logits)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits.copy_(torch.where(seen, penalized, logits))


class FrequencyPresencePenalty:
    """OpenAI: minus frequency_penalty x count, and minus presence_penalty once, for each token of the output
    so far (the prompt does not count, unlike TensorRT-LLM's)."""

    def applies(self, seq: Sequence) -> bool:
        params = seq.request.sampling
        return bool(seq.output_ids) and (params.frequency_penalty != 0.0 or params.presence_penalty != 0.0)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        counts = _token_counts([seq.output_ids for seq in seqs], logits)
        frequency = per_row([seq.request.sampling.frequency_penalty for seq in seqs], logits)
        presence = per_row([seq.request.sampling.presence_penalty for seq in seqs], logits)
        logits -= frequency * counts + presence * (counts > 0).to(logits.dtype)


class MinTokensStops:
    """min_tokens: the stop ids cannot be chosen until that many tokens are out."""

    def applies(self, seq: Sequence) -> bool:
        params = seq.request.sampling
        return bool(params.stop_token_ids) and len(seq.output_ids) < params.min_tokens

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        logits.masked_fill_(_token_mask([seq.request.sampling.stop_token_ids for seq in seqs], logits), float("-inf"))


# In the order they run: penalties on the model's logits, then the stop ids masked.
PROCESSORS: tuple[LogitsProcessor, ...] = (RepetitionPenalty(), FrequencyPresencePenalty(), MinTokensStops())
