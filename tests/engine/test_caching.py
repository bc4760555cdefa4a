"""The reference engine with its prefix cache on and off, and n choices: a cache hit never changes an answer."""
import queue

import numpy as np
import pytest

from nanovl.engine.reference import ReferenceEngine
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.runner import ModelRunner
from tests.conftest import chat_ids


class Engine:
    """A started reference engine and what it reported, per (request id, choice)."""

    def __init__(self, config, *, caching=True, kv_cache_tokens=16384, max_running=8):
        self.config = config
        self.outputs = queue.SimpleQueue()
        self.runner = ModelRunner(config, kv_cache_tokens=kv_cache_tokens, prefix_caching=caching)
        self.engine = ReferenceEngine(self.runner, self.outputs.put, max_running=max_running).start()

    def run(self, *requests, timeout=120):
        """Submits the requests together -> ({(id, index): tokens}, {(id, index): final output})."""
        for request in requests:
            self.engine.submit(request)
        expected = sum(r.sampling.n for r in requests)
        tokens, finals = {}, {}
        while len(finals) < expected:
            out = self.outputs.get(timeout=timeout)
            key = (out.request_id, out.sequence_index)
            tokens.setdefault(key, []).extend(out.token_ids)
            if out.finished:
                assert key not in finals, "one final output per choice"
                finals[key] = out
        return tokens, finals

    def close(self):
        self.engine.shutdown()


@pytest.fixture(scope="module")
def engines(config):
    on, off = Engine(config), Engine(config, caching=False)
    yield on, off
    on.close()
    off.close()


def request(config, rid, ids, *, table=None, extra=None, salt=None, **sampling):
    sampling = {"max_tokens": 16, "temperature": 0.0, **sampling}
    return GenerationRequest(rid, np.asarray(ids, np.int32), SamplingParams(stop_token_ids=config.eos_token_ids,
                                                                            **sampling),
                             prompt_table=table, prompt_extra_ids=extra, cache_salt=salt)


def image_prompt(config, tokenizer, seed, question="What is in the image?"):
    """A prompt with one 2-tile image of random embeddings: (ids, table, extra ids keyed by `seed`)."""
    rows = 2 * config.tokens_per_tile
    before = chat_ids(tokenizer, "Look at this picture please")[:-5]
    ids = before + [config.vocab_size + r for r in range(rows)] + chat_ids(tokenizer, question)[1:]
    table = np.random.default_rng(seed).standard_normal((rows, config.llm_hidden_size)).astype(np.float32)
    extra = np.array([seed + 1 if t >= config.vocab_size else 0 for t in ids], np.int64)
    return ids, table, extra, len(before)


def test_the_same_request_twice_hits_and_answers_the_same(engines, config, tokenizer):
    on, off = engines
    ids = chat_ids(tokenizer, "a fairly long question about caching " * 6)
    first, firsts = on.run(request(config, "a1", ids))
    second, seconds = on.run(request(config, "a2", ids))
    plain, _ = off.run(request(config, "a", ids))
    assert first[("a1", 0)] == second[("a2", 0)] == plain[("a", 0)]
    assert firsts[("a1", 0)].cached_tokens == 0
    assert seconds[("a2", 0)].cached_tokens == (len(ids) - 1) // 16 * 16 > 0


def test_image_b_after_image_a_of_the_same_size_shares_only_the_text_before_it(engines, config, tokenizer):
    on, off = engines
    ids_a, table_a, extra_a, before = image_prompt(config, tokenizer, 1)
    ids_b, table_b, extra_b, _ = image_prompt(config, tokenizer, 2)
    assert ids_a == ids_b
    on.run(request(config, "img-a", ids_a, table=table_a, extra=extra_a))
    tokens_b, finals_b = on.run(request(config, "img-b", ids_b, table=table_b, extra=extra_b))
    plain_b, _ = off.run(request(config, "img-b", ids_b, table=table_b, extra=extra_b))
    assert tokens_b == plain_b
    assert finals_b[("img-b", 0)].cached_tokens == before // 16 * 16
    again, finals = on.run(request(config, "img-b2", ids_b, table=table_b, extra=extra_b))
    assert again[("img-b2", 0)] == plain_b[("img-b", 0)] and finals[("img-b2", 0)].cached_tokens > before


def test_a_multi_turn_conversation_answers_the_same_with_the_cache(engines, config, tokenizer):
    on, off = engines
    ids, table, extra, _ = image_prompt(config, tokenizer, 3)
    answers = {}
    for name, engine in (("on", on), ("off", off)):
        turn, turn_extra, out = list(ids), extra, []
        for n in range(3):
            tokens, finals = engine.run(request(config, f"{name}{n}", turn, table=table, extra=turn_extra))
            out.append((tokens[(f"{name}{n}", 0)], finals[(f"{name}{n}", 0)].cached_tokens))
            turn = turn + tokens[(f"{name}{n}", 0)] + chat_ids(tokenizer, f"and then {n}?")[1:]
            turn_extra = np.concatenate([extra, np.zeros(len(turn) - len(extra), np.int64)])
        answers[name] = out
    assert [t for t, _ in answers["on"]] == [t for t, _ in answers["off"]]
    assert answers["on"][1][1] > len(ids) - 16 and answers["on"][2][1] > answers["on"][1][1]
    assert all(cached == 0 for _, cached in answers["off"])


def test_cache_salt_keeps_tenants_apart(engines, config, tokenizer):
    on, _ = engines
    ids = chat_ids(tokenizer, "the salted prompt " * 8)
    on.run(request(config, "s1", ids, salt="tenant-a"))
    _, other = on.run(request(config, "s2", ids, salt="tenant-b"))
    _, same = on.run(request(config, "s3", ids, salt="tenant-a"))
    assert other[("s2", 0)].cached_tokens == 0 and same[("s3", 0)].cached_tokens > 0


def test_under_preemption_the_cache_changes_no_answer(config, tokenizer):
    prompts = [chat_ids(tokenizer, f"shared system words then question {i}") for i in range(6)]
    results = []
    for caching in (True, False):
        engine = Engine(config, caching=caching, kv_cache_tokens=160, max_running=6)   # 10 blocks for 6 requests
        try:
            results.append(engine.run(*[request(config, f"p{i}", p, max_tokens=24, min_tokens=24)
                                        for i, p in enumerate(prompts)])[0])
        finally:
            engine.close()
    assert results[0] == results[1]


def test_n_choices_with_a_seed_are_reproducible_and_share_one_prefill(config, tokenizer):
    # Caching off: the choices share the prompt's blocks through the fork alone.
    engine = Engine(config, caching=False)
    try:
        ids = chat_ids(tokenizer, "tell me a story about forks " * 5)
        full_blocks = (len(ids) - 1) // 16
        params = {"max_tokens": 12, "min_tokens": 12, "temperature": 1.0, "seed": 1234}
        before = engine.runner.blocks.allocated
        one, _ = engine.run(request(config, "one", ids, **params))
        single = engine.runner.blocks.allocated - before
        before = engine.runner.blocks.allocated
        four, finals = engine.run(request(config, "four", ids, n=4, **params))
        assert engine.runner.blocks.allocated - before == single + 3 * (single - full_blocks)
        again, _ = engine.run(request(config, "four", ids, n=4, **params))
    finally:
        engine.close()
    choices = [four[("four", i)] for i in range(4)]
    assert choices == [again[("four", i)] for i in range(4)]
    assert choices[0] == one[("one", 0)]                  # choice 0 draws what n=1 draws
    assert len({tuple(c) for c in choices}) == 4 and all(len(c) == 12 for c in choices)
    assert sorted(finals) == [("four", i) for i in range(4)]


def test_n_greedy_choices_all_equal_the_single_answer(engines, config, tokenizer):
    on, off = engines
    ids = chat_ids(tokenizer, "greedy choices")
    single, _ = off.run(request(config, "g", ids))
    for engine in (on, off):
        tokens, _ = engine.run(request(config, "g4", ids, n=4))
        assert [tokens[("g4", i)] for i in range(4)] == [single[("g", 0)]] * 4


def test_cancelling_a_request_ends_every_choice(engines, config, tokenizer):
    on, _ = engines
    on.engine.submit(request(config, "c", chat_ids(tokenizer, "cancel me"), n=3, max_tokens=500, min_tokens=500))
    on.engine.cancel("c")
    finals = {}
    while len(finals) < 3:
        out = on.outputs.get(timeout=60)
        if out.finished:
            finals[out.sequence_index] = out.finish_reason
    assert set(finals) == {0, 1, 2} and set(finals.values()) <= {"cancelled", "length"}
