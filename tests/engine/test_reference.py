import queue

import numpy as np
import pytest
import torch

from nanovl.engine.reference import ReferenceEngine
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.runner import ModelRunner
from nanovl.core.errors import ClientError
from tests.conftest import chat_ids, hf_greedy


class Collector:
    """Gathers engine outputs per request until each one finishes."""

    def __init__(self):
        self.outputs = queue.SimpleQueue()

    def __call__(self, out):
        self.outputs.put(out)

    def run(self, n_requests, timeout=120):
        tokens, finals, logprobs = {}, {}, {}
        while len(finals) < n_requests:
            out = self.outputs.get(timeout=timeout)
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            logprobs.setdefault(out.request_id, []).extend(out.logprobs or [])
            if out.finished:
                finals[out.request_id] = out
        self.logprobs = logprobs
        return tokens, finals


def make_engine(config, *, max_running=4, kv_cache_tokens=16384, max_step_tokens=8192):
    collector = Collector()
    runner = ModelRunner(config, kv_cache_tokens=kv_cache_tokens)
    engine = ReferenceEngine(runner, collector, max_running=max_running, max_step_tokens=max_step_tokens).start()
    engine.collector = collector
    return engine


@pytest.fixture(scope="module")
def engine(config):
    eng = make_engine(config)
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


def _sixteen(engine, config, prompts, first_params):
    """Request 0 runs while 15 others arrive and leave around it."""
    engine.submit(_request("r0", prompts[0], config, **first_params))
    for i in range(1, 16):
        engine.submit(_request(f"r{i}", prompts[i], config, max_tokens=4 + i, temperature=0.8, seed=i))
    return engine.collector.run(16)


def test_greedy_output_is_the_same_alone_or_in_a_batch_of_16(engine, config, tokenizer):
    prompts = [chat_ids(tokenizer, f"request number {i} says hello " * (1 + i % 3)) for i in range(16)]
    params = {"max_tokens": 24, "temperature": 0.0}
    engine.submit(_request("alone", prompts[0], config, **params))
    alone, _ = engine.collector.run(1)
    tokens, finals = _sixteen(engine, config, prompts, params)
    assert tokens["r0"] == alone["alone"]
    assert all(f.finish_reason in ("stop", "length") for f in finals.values())
    assert engine.runner.blocks.free_blocks == engine.runner.blocks.num_blocks


def test_same_seed_same_tokens_whatever_the_batch(engine, config, tokenizer):
    prompts = [chat_ids(tokenizer, f"seeded {i}") for i in range(16)]
    params = {"max_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 1234}
    engine.submit(_request("alone", prompts[0], config, **params))
    alone, _ = engine.collector.run(1)
    tokens, _ = _sixteen(engine, config, prompts, params)
    assert tokens["r0"] == alone["alone"]


def test_preemption_under_a_tiny_kv_cache_keeps_outputs(config, tokenizer, hf_llm):
    engine = make_engine(config, max_running=8, kv_cache_tokens=160)   # 10 blocks of 16 tokens
    try:
        prompts = [chat_ids(tokenizer, f"p{i}") for i in range(6)]
        for i, ids in enumerate(prompts):
            engine.submit(_request(str(i), ids, config, max_tokens=30, temperature=0.0))
        tokens, _ = engine.collector.run(6)
        for i, ids in enumerate(prompts):
            assert tokens[str(i)] == hf_greedy(hf_llm, ids, 30, config.eos_token_ids)
        assert engine.runner.blocks.free_blocks == engine.runner.blocks.num_blocks
    finally:
        engine.shutdown()


def test_a_prompt_larger_than_the_cache_fails_alone(config, tokenizer):
    engine = make_engine(config, kv_cache_tokens=64)
    try:
        engine.submit(_request("big", list(range(200)), config, max_tokens=2))
        engine.submit(_request("ok", chat_ids(tokenizer, "hi")[:10], config, max_tokens=2, temperature=0.0))
        tokens, finals = engine.collector.run(2)
        assert finals["big"].finish_reason == "error" and "KV cache" in finals["big"].error
        assert finals["ok"].finish_reason in ("stop", "length")
    finally:
        engine.shutdown()


def test_cancel_frees_the_sequence_within_a_step(engine, config, tokenizer):
    engine.submit(_request("long", chat_ids(tokenizer, "long one"), config, max_tokens=5000, temperature=1.0, seed=1))
    first = engine.collector.outputs.get(timeout=30)
    assert first.request_id == "long" and not first.finished
    engine.cancel("long")
    _, finals = engine.collector.run(1)
    assert finals["long"].finish_reason == "cancelled"
    assert engine.scheduler.idle and engine.runner.blocks.free_blocks == engine.runner.blocks.num_blocks


def test_shutdown_ends_running_and_waiting_requests_with_an_error(config, tokenizer):
    engine = make_engine(config, max_running=1)
    ids = chat_ids(tokenizer, "long one")
    engine.submit(_request("running", ids, config, max_tokens=5000, temperature=0.0))
    assert engine.collector.outputs.get(timeout=30).request_id == "running"
    engine.submit(_request("waiting", ids, config, max_tokens=5000, temperature=0.0))
    engine.shutdown()
    _, finals = engine.collector.run(2)
    assert {k: (f.finish_reason, f.error) for k, f in finals.items()} == {
        "running": ("error", "the llm engine shut down"), "waiting": ("error", "the llm engine shut down")}


def test_min_tokens_masks_the_stop_tokens(engine, config, tokenizer):
    ids = chat_ids(tokenizer, "x")
    engine.submit(_request("probe", ids, config, max_tokens=1, temperature=0.0))
    first, _ = engine.collector.run(1)
    stop_first = SamplingParams(max_tokens=10, min_tokens=6, temperature=0.0, stop_token_ids=(first["probe"][0],))
    engine.submit(GenerationRequest("m", np.asarray(ids, np.int32), stop_first))
    tokens, finals = engine.collector.run(1)
    assert finals["m"].completion_tokens >= 6 and first["probe"][0] not in tokens["m"][:6]


def test_logprobs_are_the_models_distribution(engine, config, tokenizer, hf_llm):
    ids = chat_ids(tokenizer, "logprobs please")
    engine.submit(_request("lp", ids, config, max_tokens=3, temperature=0.0, logprobs=5))
    tokens, _ = engine.collector.run(1)
    first = engine.collector.logprobs["lp"][0]
    with torch.no_grad():
        reference = torch.log_softmax(hf_llm(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert first.logprob == pytest.approx(float(reference[tokens["lp"][0]]), abs=1e-4)
    assert [t for t, _ in first.top] == torch.topk(reference, 5).indices.tolist()
    assert first.top[0][0] == tokens["lp"][0]   # greedy picks the best


def test_frequency_penalty_changes_a_repetitive_greedy_output(engine, config, tokenizer):
    ids = chat_ids(tokenizer, "la la la la la")
    engine.submit(_request("plain", ids, config, max_tokens=40, temperature=0.0))
    engine.submit(_request("penal", ids, config, max_tokens=40, temperature=0.0, frequency_penalty=2.0,
                           presence_penalty=2.0))
    tokens, _ = engine.collector.run(2)
    plain, penal = tokens["plain"], tokens["penal"]
    assert len(set(penal)) / max(1, len(penal)) >= len(set(plain)) / max(1, len(plain))


MIXED = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.9, top_k=30, top_p=0.9, seed=3),
         "penalized": dict(temperature=0.0, repetition_penalty=1.4, frequency_penalty=1.0),
         "logprobs": dict(temperature=0.7, seed=4, logprobs=3), "min_tokens": dict(temperature=0.0, min_tokens=12)}


def test_a_batch_mixing_sampling_settings_gives_each_request_its_own_tokens(engine, config, tokenizer):
    ids = {name: chat_ids(tokenizer, f"mixed {name} la la la") for name in MIXED}
    alone = {}
    for name, settings in MIXED.items():
        engine.submit(_request(name, ids[name], config, max_tokens=16, **settings))
        tokens, _ = engine.collector.run(1)
        alone[name] = (tokens[name], engine.collector.logprobs[name])
    for name, settings in MIXED.items():
        engine.submit(_request(name, ids[name], config, max_tokens=16, **settings))
    together, _ = engine.collector.run(len(MIXED))
    for name in MIXED:
        assert together[name] == alone[name][0], name
        got, want = engine.collector.logprobs[name], alone[name][1]   # the forward's float sums vary with the batch
        assert [[t for t, _ in lp.top] for lp in got] == [[t for t, _ in lp.top] for lp in want]
        assert [lp.logprob for lp in got] == pytest.approx([lp.logprob for lp in want], abs=1e-4)
    assert len(alone["min_tokens"][0]) >= 12 and len(alone["logprobs"][1]) == len(alone["logprobs"][0])


@pytest.mark.parametrize("field, value", [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0),
                                          ("top_k", -2), ("seed", -5), ("repetition_penalty", 0.0),
                                          ("frequency_penalty", 3.0), ("presence_penalty", -3.0),
                                          ("stop", ("",)), ("logprobs", 21)])
def test_bad_sampling_values_are_client_errors(field, value):
    with pytest.raises(ClientError):
        SamplingParams(**{field: value})


def test_a_stop_token_is_neither_shown_nor_counted(engine, config, tokenizer):
    # NIM reports completion_tokens without the stop token (126 for a 126-token answer): so do we.
    ids = chat_ids(tokenizer, "count")
    engine.submit(_request("probe", ids, config, max_tokens=4, temperature=0.0))
    probe, _ = engine.collector.run(1)
    third = probe["probe"][2]
    stopping = SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=(third,))
    engine.submit(GenerationRequest("s", np.asarray(ids, np.int32), stopping))
    tokens, finals = engine.collector.run(1)
    shown = tokens["s"]
    assert third not in shown and shown == probe["probe"][:len(shown)]
    assert (finals["s"].finish_reason, finals["s"].completion_tokens) == ("stop", len(shown))
