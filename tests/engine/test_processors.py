"""nanovl/engine/processors.py: the penalties and min_tokens as batch-wise logits processors, checked against the
straightforward per-row formulas they replace."""
from collections import Counter

import numpy as np
import torch

from nanovl.engine.processors import PROCESSORS, FrequencyPresencePenalty, MinTokensStops, RepetitionPenalty
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.sampler import Sampler, make_generator
from nanovl.engine.scheduler import Sequence

VOCAB = 64


def seq(rid, prompt=(1, 2, 3), output=(), **sampling):
    s = Sequence(GenerationRequest(rid, np.asarray(prompt, np.int32), SamplingParams(**sampling)))
    s.output_ids = list(output)
    return s


def per_row_penalties(row: torch.Tensor, s: Sequence) -> torch.Tensor:
    """The textbook formulas, one token at a time: HF's repetition penalty over prompt + output, OpenAI's
    frequency and presence penalties over the output."""
    params, row = s.request.sampling, row.clone()
    for token in {int(t) for t in s.request.prompt_ids} | set(s.output_ids):
        if token < len(row):
            value = float(row[token])
            row[token] = value / params.repetition_penalty if value > 0 else value * params.repetition_penalty
    for token, count in Counter(s.output_ids).items():
        row[token] -= params.frequency_penalty * count + params.presence_penalty
    return row


def per_row_draw(row: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One row on its own, as the engine drew before the sampler was batched: temperature, top-k, top-p, draw."""
    row = row / params.temperature
    if params.top_k:
        row = row.masked_fill(row < torch.topk(row, min(params.top_k, len(row))).values[-1], float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        sorted_probs[torch.cumsum(sorted_probs, 0) - sorted_probs >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


PENALIZED = [
    dict(prompt=(5, 6, 7, VOCAB + 3), output=(5, 9, 9, 9), repetition_penalty=1.3),   # an image row in the prompt
    dict(output=(4, 4, 8), frequency_penalty=0.7, presence_penalty=-0.4),
    dict(prompt=(10, 11), output=(11, 12, 12), repetition_penalty=0.8, frequency_penalty=2.0, presence_penalty=1.5),
    dict(output=(), frequency_penalty=1.0),   # nothing out yet: nothing to count
]


def test_penalties_give_the_per_row_formulas_logits_and_tokens():
    logits = torch.randn(len(PENALIZED), VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, seed in [(0.0, None), (1.0, 7)]:
        seqs = [seq(str(i), temperature=temperature, seed=seed, **kw) for i, kw in enumerate(PENALIZED)]
        seen = []
        recorder = Recording(lambda s: True, seen)
        tokens = [s.token for s in Sampler([*PROCESSORS, recorder])(logits.clone(), seqs)]
        expected = torch.stack([per_row_penalties(logits[i], s) for i, s in enumerate(seqs)])
        torch.testing.assert_close(seen[0][1], expected, rtol=1e-6, atol=1e-6)
        if temperature == 0.0:
            assert tokens == expected.argmax(dim=-1).tolist()
        else:
            assert tokens == [per_row_draw(expected[i], s.request.sampling, make_generator(s.request.sampling))
                              for i, s in enumerate(seqs)]


def test_the_penalties_apply_only_where_they_are_set():
    assert RepetitionPenalty().applies(seq("a", repetition_penalty=1.1))
    assert not RepetitionPenalty().applies(seq("a", frequency_penalty=1.0, output=(3,)))
    assert FrequencyPresencePenalty().applies(seq("a", presence_penalty=-1.0, output=(3,)))
    assert not FrequencyPresencePenalty().applies(seq("a", presence_penalty=-1.0))   # no output yet
    assert not FrequencyPresencePenalty().applies(seq("a", repetition_penalty=1.1, output=(3,)))


def test_min_tokens_masks_the_stop_ids_until_enough_are_out():
    stops = dict(min_tokens=3, max_tokens=8, stop_token_ids=(2, 5))
    early, done, free = seq("early", output=(7, 7), **stops), seq("done", output=(7, 7, 7), **stops), seq("free")
    assert MinTokensStops().applies(early)
    assert not MinTokensStops().applies(done) and not MinTokensStops().applies(free)
    logits = torch.zeros(1, 8)
    logits[0, 5] = 10.0
    MinTokensStops()(logits, [early])
    assert logits[0, 2] == logits[0, 5] == float("-inf") and logits[0, 7] == 0.0


class Recording:
    """A processor that records the rows it is given (ids and a copy of their logits) and changes nothing."""

    def __init__(self, applies, seen: list):
        self.applies, self.seen = applies, seen

    def __call__(self, logits, seqs):
        self.seen.append(([s.request_id for s in seqs], logits.clone()))
