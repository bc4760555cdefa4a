import queue
import threading

import numpy as np
import pytest

from nanovl.engine.engine import ReferenceEngine
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.runner import ModelRunner
from nanovl.engine.scheduler import Scheduler, Sequence
from nanovl.errors import ClientError
from tests.conftest import chat_ids, hf_greedy


class Collector:
    """Gathers engine outputs per request until each one finishes."""

    def __init__(self):
        self.outputs = queue.SimpleQueue()

    def __call__(self, out):
        self.outputs.put(out)

    def run(self, n_requests, timeout=60):
        tokens, finals = {}, {}
        while len(finals) < n_requests:
            out = self.outputs.get(timeout=timeout)
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                finals[out.request_id] = out
        return tokens, finals


@pytest.fixture(scope="module")
def runner(config):
    return ModelRunner(config)


@pytest.fixture
def engine(runner):
    collector = Collector()
    eng = ReferenceEngine(runner, collector, max_running=4).start()
    eng.collector = collector
    yield eng
    eng.shutdown()


def _request(rid, ids, config, **sampling):
    params = SamplingParams(stop_token_ids=config.eos_token_ids, **sampling)
    return GenerationRequest(rid, np.asarray(ids, np.int32), params)


@pytest.mark.parametrize("text", ["Hello there", "Describe the image in detail.", "東京 🚀"])
def test_greedy_equals_transformers_generate(engine, config, tokenizer, hf_llm, text):
    ids = chat_ids(tokenizer, text)
    engine.submit(_request("a", ids, config, max_tokens=24, temperature=0.0))
    tokens, finals = engine.collector.run(1)
    assert tokens["a"] == hf_greedy(hf_llm, ids, 24, config.eos_token_ids)
    assert finals["a"].prompt_tokens == len(ids)
    assert finals["a"].finish_reason in ("stop", "length")


def test_output_is_the_same_alone_or_in_a_batch_joined_mid_flight(engine, config, tokenizer):
    prompts = [chat_ids(tokenizer, f"request number {i} says hello") for i in range(10)]
    engine.submit(_request("alone", prompts[0], config, max_tokens=16, temperature=0.0))
    alone, _ = engine.collector.run(1)
    engine.submit(_request("r0", prompts[0], config, max_tokens=16, temperature=0.0))
    for i in range(1, 10):   # more than max_running: some wait in the queue, others join while r0 runs
        engine.submit(_request(f"r{i}", prompts[i], config, max_tokens=8 + i, temperature=0.7, seed=i))
    tokens, finals = engine.collector.run(10)
    assert tokens["r0"] == alone["alone"]
    assert all(f.finish_reason in ("stop", "length") for f in finals.values())


def test_same_seed_same_tokens(engine, config, tokenizer):
    ids = chat_ids(tokenizer, "seeded")
    for rid in ("s1", "s2"):
        engine.submit(_request(rid, ids, config, max_tokens=20, temperature=1.0, top_p=0.9, seed=1234))
    tokens, _ = engine.collector.run(2)
    assert tokens["s1"] == tokens["s2"]


def test_cancel_frees_the_sequence(engine, config, tokenizer):
    ids = chat_ids(tokenizer, "long one")
    engine.submit(_request("long", ids, config, max_tokens=5000, temperature=1.0, seed=1))
    first = engine.collector.outputs.get(timeout=30)
    assert first.request_id == "long" and not first.finished
    engine.cancel("long")
    _, finals = engine.collector.run(1)
    assert finals["long"].finish_reason == "cancelled"
    assert engine.runner._caches == {}


def test_max_tokens_is_honoured(engine, config, tokenizer):
    engine.submit(_request("m", chat_ids(tokenizer, "x"), config, max_tokens=3, temperature=1.0, seed=0,
                           top_k=5))
    tokens, finals = engine.collector.run(1)
    assert finals["m"].completion_tokens <= 3 and len(tokens["m"]) <= 3


@pytest.mark.parametrize("field, value", [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0),
                                          ("top_k", -2), ("seed", -5)])
def test_bad_sampling_values_are_client_errors(field, value):
    with pytest.raises(ClientError, match=field):
        SamplingParams(**{field: value})


def test_scheduler_bounds_the_running_batch():
    scheduler = Scheduler(max_running=2)
    seqs = [Sequence(GenerationRequest(str(i), np.zeros(1, np.int32), SamplingParams())) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    prefills, decodes = scheduler.schedule()
    assert prefills == seqs[:2] and decodes == []
    seqs[0].finish_reason = "stop"
    assert scheduler.retire_finished() == [seqs[0]]
    prefills, decodes = scheduler.schedule()
    assert prefills == [seqs[2]] and decodes == [seqs[1]]
    assert scheduler.remove("1") is seqs[1] and scheduler.remove("nope") is None
