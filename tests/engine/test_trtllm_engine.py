"""TrtLlmEngine's own code (enqueue, the response thread, cancellation, errors, stats, choices, guided decoding,
logit bias, KV-cache reuse) against a strict stand-in for TensorRT-LLM 1.2.1's Executor bindings
(tests/fake_trtllm.py): everything up to the point where the GPU takes over. The Executor itself has not run
here (README, GPU deployment)."""
import json
import queue
import sys

import numpy as np
import pytest

from nanovl.engine import trtllm
from nanovl.engine.trtllm_mapping import TrtLlmOptions
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.core.errors import ClientError, ServerError
from tests import fake_trtllm

EOT, EOS = 9, 1


@pytest.fixture
def fake(monkeypatch, config):
    module = fake_trtllm.install(monkeypatch)
    monkeypatch.setattr(module.Executor, "vocab_size", config.vocab_size)
    return module


def _engine(config, tmp_path, *, world_size=1, build=None, **options):
    (tmp_path / "config.json").write_text(json.dumps(
        {"pretrained_config": {"dtype": "bfloat16", "mapping": {"world_size": world_size}},
         "build_config": build or {"max_batch_size": 64, "max_num_tokens": 8192,
                                   "plugin_config": {"tokens_per_block": fake_trtllm.Executor.tokens_per_block}}}))
    outputs: queue.SimpleQueue = queue.SimpleQueue()
    engine = trtllm.TrtLlmEngine(TrtLlmOptions(tmp_path, **options), config, outputs.put).start()
    return engine, outputs


def _collect(outputs, request_id="r1", timeout=10.0):
    got = []
    while not got or not got[-1].finished:
        out = outputs.get(timeout=timeout)
        assert out.request_id == request_id
        got.append(out)
    return got


def _params(**kwargs):
    return SamplingParams(**{"max_tokens": 16, "temperature": 0.0, "stop_token_ids": (EOT, EOS), **kwargs})


def test_a_text_request_streams_and_stops_on_the_end_id(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6, 7, EOT], np.int32), _params()))
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert [t for out in got for t in out.token_ids] == [5, 6, 7]
    # The end id is not returned by the Executor but is counted, as the reference engine counts it.
    # Three tokens shown and counted; the end id ends the stream uncounted (NIM's usage).
    assert (got[-1].finish_reason, got[-1].completion_tokens, got[-1].prompt_tokens) == ("stop", 3, 4)
    request = fake.Executor.instances[0].enqueued[0]
    assert request.end_id == EOT and request.stop_words == [[EOS]] and request.streaming
    assert request.sampling_config.top_k == 1 and fake.Executor.instances[0].is_shut_down


def test_stop_words_and_length(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, EOS, 7], np.int32), _params()))
        stopped = _collect(outputs)
        engine.submit(GenerationRequest("r1", np.array([5, 6, 7], np.int32), _params(max_tokens=5)))
        capped = _collect(outputs)
    finally:
        engine.shutdown()
    assert [t for o in stopped for t in o.token_ids] == [5] and stopped[-1].finish_reason == "stop"
    assert [t for o in capped for t in o.token_ids] == [5, 6, 7, 5, 6] and capped[-1].finish_reason == "length"
    assert capped[-1].completion_tokens == 5


def test_logprobs_follow_each_streamed_token(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6, 7], np.int32), _params(max_tokens=3, logprobs=0)))
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert [lp.logprob for o in got for lp in o.logprobs] == [-0.5, -1.5, -2.5]


@pytest.mark.needs_torch
def test_an_image_prompt_sends_its_table_in_the_engine_dtype(fake, config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(fake.Executor, "table_dtype", torch.bfloat16)
    vocab, hidden = config.vocab_size, config.llm_hidden_size
    ids = np.array([5, vocab, vocab + 1, vocab + 2, 6, EOT], np.int32)
    table = np.random.default_rng(0).standard_normal((3, hidden)).astype(np.float32)
    engine, outputs = _engine(config, tmp_path, enable_kv_cache_reuse=True)
    try:
        engine.submit(GenerationRequest("r1", ids, _params(), table))
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert [t for o in got for t in o.token_ids] == [5, 6] and got[-1].finish_reason == "stop"
    tuning = fake.Executor.instances[0].enqueued[0].prompt_tuning_config
    assert tuning.embedding_table.dtype == torch.bfloat16 and tuning.embedding_table.shape == (3, hidden)
    assert torch.equal(tuning.embedding_table, torch.from_numpy(table).to(torch.bfloat16))
    extra = tuning.input_token_extra_ids
    assert extra[0] == extra[4] == 0 and extra[1] == extra[2] == extra[3] >= 1


def test_cancel_ends_the_stream_cancelled_and_forgets_it(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6, 7], np.int32), _params(max_tokens=10_000)))
        assert outputs.get(timeout=10).token_ids
        engine.cancel("r1")
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert got[-1].finish_reason == "cancelled"
    assert engine._live == {} and engine._by_key == {}


@pytest.mark.parametrize("fault, message", [("fail_token", "injected executor failure"),
                                            ("garble_token", "reading its response failed")])
def test_a_failed_or_unreadable_response_stays_with_its_request(fake, config, tmp_path, monkeypatch, fault,
                                                                message):
    monkeypatch.setattr(fake.Executor, fault, 13)
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("bad", np.array([5, 13], np.int32), _params()))
        failed = _collect(outputs, "bad")
        engine.submit(GenerationRequest("r1", np.array([5, EOT], np.int32), _params()))
        fine = _collect(outputs)
    finally:
        engine.shutdown()
    assert failed[-1].finish_reason == "error" and message in failed[-1].error
    assert fine[-1].finish_reason == "stop" and fine[0].token_ids == [5] and engine._live == {}


def test_requests_the_executor_cannot_take_fail_alone(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("empty", np.array([], np.int32), _params()))
        refused = _collect(outputs, "empty")
        with pytest.raises(ClientError, match="top_logprobs > 0 is not available") as top:
            engine.submit(GenerationRequest("top", np.array([5], np.int32), _params(logprobs=2)))
    finally:
        engine.shutdown()
    assert refused[-1].finish_reason == "error" and "refused the request" in refused[-1].error
    assert top.value.param == "top_logprobs" and len(fake.Executor.instances[0].enqueued) == 0


def test_sampled_requests_without_a_seed_get_different_seeds(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        for name in ("a", "b"):
            engine.submit(GenerationRequest(name, np.array([5, EOT], np.int32), _params(temperature=0.7)))
            _collect(outputs, name)
    finally:
        engine.shutdown()
    first, second = (r.sampling_config for r in fake.Executor.instances[0].enqueued)
    assert first.top_p == 1.0 and first.temperature == 0.7 and first.seed != second.seed


def test_stats_come_from_the_iteration_stats_and_fall_to_zero_when_idle(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6], np.int32), _params(max_tokens=10_000)))
        outputs.get(timeout=10)
        engine._update_stats()
        assert (engine.stats.running, engine.stats.kv_cache_usage) == (1, 0.1)
        engine.cancel("r1")
        _collect(outputs)
        engine._update_stats()   # the idle Executor reports no iteration at all
        assert (engine.stats.running, engine.stats.waiting, engine.stats.kv_cache_usage) == (0, 0, 0.0)
    finally:
        engine.shutdown()


def test_shutdown_ends_running_streams_with_an_error(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    engine.submit(GenerationRequest("r1", np.array([5, 6], np.int32), _params(max_tokens=10_000)))
    outputs.get(timeout=10)
    engine.shutdown()
    got = _collect(outputs)
    assert got[-1].finish_reason == "error" and "shut down" in got[-1].error


def test_a_cancel_answered_with_an_error_is_still_cancelled(fake, config, tmp_path, monkeypatch):
    monkeypatch.setattr(fake.Executor, "error_on_cancel", True)
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6], np.int32), _params(max_tokens=10_000)))
        outputs.get(timeout=10)
        engine.cancel("r1")
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert got[-1].finish_reason == "cancelled" and got[-1].error is None


def test_limits_are_capped_at_what_the_engine_was_built_for(fake, config, tmp_path):
    engine, _ = _engine(config, tmp_path, build={"max_batch_size": 4, "max_num_tokens": 2048}, max_batch_size=32,
                        max_num_tokens=8192)
    engine.shutdown()
    executor_config = fake.Executor.instances[0].config
    assert (executor_config.max_batch_size, executor_config.max_num_tokens) == (4, 2048)


def test_without_chunked_context_a_prompt_must_fit_one_step(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path, build={"max_batch_size": 8, "max_num_tokens": 64},
                              enable_chunked_context=False)
    try:
        engine.submit(GenerationRequest("r1", np.full(65, 5, np.int32), _params()))
        got = _collect(outputs)
    finally:
        engine.shutdown()
    assert got[-1].finish_reason == "error" and "without chunked context" in got[-1].error
    assert fake.Executor.instances[0].enqueued == []


def test_executor_config_and_tensor_parallel_orchestrator(fake, config, tmp_path, monkeypatch):
    worker = tmp_path / "wheel" / "tensorrt_llm" / "bin" / "executorWorker"
    worker.parent.mkdir(parents=True)
    worker.write_text("")
    worker.chmod(0o755)
    monkeypatch.setattr(sys.modules["tensorrt_llm"], "__file__", str(worker.parent.parent / "__init__.py"))
    engine, _ = _engine(config, tmp_path, world_size=2, max_batch_size=8, max_num_tokens=4096,
                        kv_cache_free_gpu_memory_fraction=0.7)   # within what it was built for
    engine.shutdown()
    executor_config = fake.Executor.instances[0].config
    assert (executor_config.max_batch_size, executor_config.max_num_tokens) == (8, 4096)
    assert executor_config.kv_cache_config.free_gpu_memory_fraction == 0.7
    assert executor_config.enable_chunked_context is True
    parallel = executor_config.parallel_config
    assert parallel.communication_mode is fake.CommunicationMode.ORCHESTRATOR and parallel.device_ids == [0, 1]
    assert parallel.orchestrator_config.worker_executable_path == str(worker)


def test_tensor_parallelism_without_the_worker_program_fails_clearly(fake, config, tmp_path):
    # The stand-in's tensorrt_llm lives at /opt/fake, where there is no bin/executorWorker.
    with pytest.raises(ServerError, match="executorWorker, which is not at /opt/fake/tensorrt_llm/bin"):
        _engine(config, tmp_path, world_size=2)
    configured = tmp_path / "worker"
    configured.write_text("")
    with pytest.raises(ServerError, match="or is not executable there"):
        _engine(config, tmp_path, world_size=2, executor_worker_path=str(configured))
    configured.chmod(0o755)
    engine, _ = _engine(config, tmp_path, world_size=2, executor_worker_path=str(configured))
    engine.shutdown()
    assert fake.Executor.instances[-1].config.parallel_config.orchestrator_config.worker_executable_path == \
        str(configured)


def _by_sequence(outputs, request_id, n, timeout=10.0):
    """Outputs of a request with n choices until each has its final one -> {sequence index: [outputs]}."""
    got: dict[int, list] = {}
    while sum(1 for outs in got.values() if outs[-1].finished) < n:
        out = outputs.get(timeout=timeout)
        earlier = got.get(out.sequence_index, [])
        assert out.request_id == request_id and not (earlier and earlier[-1].finished)   # nothing after a final
        got.setdefault(out.sequence_index, []).append(out)
    return got


def test_n_choices_stream_as_sequences_that_end_on_their_own(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6, 7, EOT], np.int32), _params(n=3)))
        got = _by_sequence(outputs, "r1", 3)
    finally:
        engine.shutdown()
    assert fake.Executor.instances[0].enqueued[0].sampling_config.num_return_sequences == 3
    # The stand-in's choice i starts i tokens into the script [5, 6, 7, EOT].
    texts = {i: [t for o in outs for t in o.token_ids] for i, outs in got.items()}
    assert texts == {0: [5, 6, 7], 1: [6, 7], 2: [7]}
    assert {i: (outs[-1].finish_reason, outs[-1].completion_tokens) for i, outs in got.items()} == \
        {0: ("stop", 3), 1: ("stop", 2), 2: ("stop", 1)}
    assert engine._live == {}


def test_guided_decoding_runs_xgrammar_over_the_checkpoint_tokenizer(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    schema = '{"type": "object", "properties": {"answer": {"type": "string"}}}'
    try:
        engine.submit(GenerationRequest("r1", np.array([5, EOT], np.int32),
                                        _params(guide_kind="json_schema", guide=schema)))
        _collect(outputs)
    finally:
        engine.shutdown()
    guided = fake.Executor.instances[0].config.guided_decoding_config
    assert guided.backend is fake.GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR
    assert guided.tokenizer_str == (config.path / "tokenizer.json").read_text()
    # The tokenizer's ids; the model's padded vocabulary may be larger (xgrammar pads the mask to it).
    top = max(t["id"] for t in json.loads(guided.tokenizer_str)["added_tokens"])
    assert len(guided.encoded_vocab) == top + 1 <= config.vocab_size
    assert guided.stop_token_ids == list(config.eos_token_ids)
    params = fake.Executor.instances[0].enqueued[0].guided_decoding_params
    assert params.guide_type is fake.GuidedDecodingParams.GuideType.JSON_SCHEMA and params.guide == schema


def test_without_guided_decoding_a_guided_request_is_a_client_error(fake, config, tmp_path):
    engine, _ = _engine(config, tmp_path, enable_guided_decoding=False)
    try:
        with pytest.raises(ClientError, match="structured output") as refused:
            engine.submit(GenerationRequest("r1", np.array([5], np.int32), _params(guide_kind="regex", guide="a+")))
    finally:
        engine.shutdown()
    assert refused.value.param == "response_format" and fake.Executor.instances[0].config.guided_decoding_config is None


@pytest.mark.needs_torch
def test_logit_bias_reaches_the_executor_as_its_embedding_bias(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("r1", np.array([5, 6, EOT], np.int32),
                                        _params(max_tokens=3, logit_bias=((42, 100.0), (6, -5.0)))))
        got = _collect(outputs)
    finally:
        engine.shutdown()
    bias = fake.Executor.instances[0].enqueued[0].embedding_bias
    assert tuple(bias.shape) == (config.vocab_size,) and float(bias[42]) == 100.0 and float(bias[6]) == -5.0
    assert [t for o in got for t in o.token_ids] == [42, 42, 42]   # the stand-in's sampler obeys a +100 bias


@pytest.mark.needs_torch
def test_kv_reuse_reuses_an_image_only_for_the_same_image_and_salt(fake, config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(fake.Executor, "table_dtype", torch.bfloat16)
    vocab = config.vocab_size
    ids = np.array([5, 6, 7, 8, vocab, vocab + 1, vocab + 2, vocab + 3, EOT], np.int32)   # blocks of 4: 2 full
    table = np.zeros((4, config.llm_hidden_size), np.float32)
    image = lambda h: np.array([0, 0, 0, 0, h, h, h, h, 0], np.int64)   # noqa: E731
    engine, outputs = _engine(config, tmp_path)
    cached = []
    try:
        for name, extra, salt in [("a", image(11), None), ("b", image(11), None), ("c", image(12), None),
                                  ("d", image(11), "tenant")]:
            engine.submit(GenerationRequest(name, ids, _params(), table, prompt_extra_ids=extra, cache_salt=salt))
            cached.append(_collect(outputs, name)[-1].cached_tokens)
    finally:
        engine.shutdown()
    # The same image: both blocks; another image: the text block before it; another tenant: none.
    assert cached == [0, 8, 4, 0]
    first = fake.Executor.instances[0].enqueued[0]
    assert first.prompt_tuning_config.input_token_extra_ids == image(11).tolist()
    assert first.output_config.return_perf_metrics and fake.Executor.instances[0].config.kv_cache_config.enable_block_reuse
    assert fake.Executor.instances[0].enqueued[3].cache_salt_id not in (None, first.cache_salt_id)


def test_a_refused_request_with_n_choices_ends_each_of_them(fake, config, tmp_path):
    engine, outputs = _engine(config, tmp_path)
    try:
        engine.submit(GenerationRequest("empty", np.array([], np.int32), _params(n=2)))
        got = _by_sequence(outputs, "empty", 2)
    finally:
        engine.shutdown()
    assert sorted(got) == [0, 1]
    assert all(outs[-1].finish_reason == "error" and "refused the request" in outs[-1].error for outs in got.values())
