"""nanovl/engine/sampler.py on synthetic logits: which rows take which path, and that a row's tokens and logprobs do
not depend on what else is in the batch."""
import zlib

import torch

from nanovl.engine import sampler as sampler_module
from nanovl.engine.request import SamplingParams
from nanovl.engine.sampler import Sampler, draw, make_generator, probabilities
from tests.engine.test_processors import VOCAB, Recording, per_row_draw, seq


def test_batched_probabilities_draw_what_each_row_would_draw_alone():
    settings = [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.3, top_k=5),
                dict(temperature=0.5, top_k=20, top_p=0.5), dict(temperature=2.0, top_k=VOCAB + 5, top_p=0.99)]
    params = [SamplingParams(seed=i, **kw) for i, kw in enumerate(settings)]
    logits = _logits(len(params), seed=3)
    for _ in range(5):
        generators = [[make_generator(p) for p in params] for _ in range(2)]
        batched = draw(probabilities(logits.clone(), params), generators[0])
        assert batched == [per_row_draw(logits[i], p, g) for i, (p, g) in enumerate(zip(params, generators[1]))]
        logits = logits.roll(1, dims=-1)
    probs = probabilities(logits, params)
    assert (probs[2] > 0).sum() == 5 and (probs[0] > 0).all()
    assert float(probs[1].sum()) >= 0.9 and float(probs[3].sum()) >= 0.5   # top_p keeps at least its mass


def _logits(n, seed=0):
    return torch.randn(n, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


class Seven(Recording):
    """Makes token 7 the best of the rows it applies to, returning new logits instead of writing its input."""

    def __call__(self, logits, seqs):
        super().__call__(logits, seqs)
        out = logits.clone()
        out[:, 7] = 100.0
        return out


def test_a_processor_sees_only_its_rows_in_one_batch():
    seen = []
    # a and c leave the fast path too (logprobs, sampling), but the processor is not theirs.
    seqs = [seq("a", temperature=0.0, logprobs=1), seq("b", temperature=0.0), seq("c", temperature=1.0, seed=1),
            seq("d", temperature=0.0)]
    logits = _logits(4)
    logits[:, 7] = -100.0   # token 7 is no row's choice until the processor says so
    tokens = [s.token for s in Sampler([Seven(lambda s: s.request_id in "bd", seen)])(logits.clone(), seqs)]
    assert [ids for ids, _ in seen] == [["b", "d"]]
    assert torch.equal(seen[0][1], logits[[1, 3]])
    assert tokens[0] == int(logits[0].argmax()) and tokens[1] == tokens[3] == 7 and tokens[2] != 7


def test_logprobs_are_the_models_own_whatever_the_processors_do():
    stops = dict(min_tokens=2, stop_token_ids=(int(_logits(1)[0].argmax()),))
    s, logits = seq("a", temperature=0.0, logprobs=2, repetition_penalty=2.0, output=(4,), **stops), _logits(1)
    sample = Sampler()(logits.clone(), [s])[0]
    model = torch.log_softmax(logits[0], dim=-1)
    assert sample.token != stops["stop_token_ids"][0]
    assert sample.logprob.logprob == float(model[sample.token])
    assert [t for t, _ in sample.logprob.top] == model.topk(2).indices.tolist()


def test_plain_greedy_rows_stay_with_the_batched_argmax(monkeypatch):
    sampler = Sampler()
    gathered, drawn = [], []
    real_gathered, real_draw = sampler._gathered, sampler_module.draw
    monkeypatch.setattr(sampler, "_gathered", lambda logits, seqs, wants: (
        gathered.append([s.request_id for s in seqs]), real_gathered(logits, seqs, wants))[1])
    monkeypatch.setattr(sampler_module, "draw", lambda probs, generators: (
        drawn.append(probs.clone()), real_draw(probs, generators))[1])
    seqs = [seq("plain", temperature=0.0), seq("sampled", temperature=1.0, seed=5),
            seq("logprobs", temperature=0.0, logprobs=2), seq("penalized", temperature=0.0, repetition_penalty=1.2),
            seq("top_k_1", temperature=0.7, top_k=1)]
    logits = _logits(len(seqs))
    samples = sampler(logits, seqs)
    assert gathered == [["sampled", "logprobs", "penalized"]]
    assert [len(probs) for probs in drawn] == [1]   # only the sampled row reaches the host draw
    assert torch.equal(drawn[0][0], torch.softmax(logits[1], dim=-1))
    assert [samples[i].token for i in (0, 4)] == [int(logits[0].argmax()), int(logits[4].argmax())]
    assert samples[0].logprob is None and [t for t, _ in samples[2].logprob.top] == logits[2].topk(2).indices.tolist()
    sampler(_logits(2), [seqs[0], seqs[4]])
    assert len(gathered) == 1   # a batch of plain greedy rows gathers nothing


SETTINGS = {
    "greedy": dict(temperature=0.0),
    "greedy_logprobs": dict(temperature=0.0, logprobs=3),
    "seeded": dict(temperature=1.0, seed=1),
    "top_k_top_p": dict(temperature=0.8, top_k=10, top_p=0.9, seed=2),
    "penalized": dict(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5),
    "penalized_seeded_logprobs": dict(temperature=1.2, seed=3, presence_penalty=1.0, logprobs=0),
    "min_tokens": dict(temperature=1.0, seed=4, min_tokens=4, stop_token_ids=(3,)),
}


def _model(s) -> torch.Tensor:
    """A stand-in forward: float [VOCAB] logits that follow from the sequence's id and its tokens so far, with
    token 3 (the min_tokens row's stop id) and the last token favoured, so penalties and masks change choices."""
    key = zlib.crc32(repr((s.request_id, s.output_ids)).encode())
    row = torch.randn(VOCAB, generator=torch.Generator().manual_seed(key)) * 2
    row[3] += 4.0
    if s.output_ids:
        row[s.output_ids[-1]] += 3.0
    return row


def _generate(names, steps=8):
    sampler, seqs = Sampler(), [seq(name, **SETTINGS[name]) for name in names]
    logprobs = {name: [] for name in names}
    for _ in range(steps):
        for s, sample in zip(seqs, sampler(torch.stack([_model(s) for s in seqs]), seqs)):
            s.output_ids.append(sample.token)
            logprobs[s.request_id].append(sample.logprob)
    return {s.request_id: (s.output_ids, logprobs[s.request_id]) for s in seqs}


def test_each_row_of_a_mixed_batch_gets_what_it_would_get_alone():
    together = _generate(list(SETTINGS))
    for name in SETTINGS:
        assert together[name] == _generate([name])[name], name
    assert 3 not in together["min_tokens"][0][:4]
    assert together["greedy"][0] != together["penalized"][0]


def test_release_restarts_a_seeded_stream():
    sampler, s, logits = Sampler(), seq("a", temperature=1.0, seed=9), _logits(1)
    first = [sampler(logits, [s])[0].token for _ in range(6)]
    sampler.release(s)
    assert [sampler(logits, [s])[0].token for _ in range(6)] == first
