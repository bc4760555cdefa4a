"""nanovl/engine/trtllm_mapping.py without TensorRT-LLM: sampling and request mapping, the prompt table, responses."""
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest

from nanovl.engine import trtllm_mapping as mapping
from nanovl.engine.trtllm import TrtLlmEngine
from nanovl.engine.factory import EngineSettings, build_engine
from nanovl.engine.request import SamplingParams
from nanovl.core.errors import ClientError, ServerError

VOCAB = 1000
EOT, EOS, EOM = 9, 1, 8


def test_greedy_is_top_k_one_without_temperature():
    kwargs = mapping.sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5, seed=3))
    assert kwargs["top_k"] == 1 and kwargs["temperature"] is None and kwargs["top_p"] is None
    assert kwargs["seed"] == 3 and kwargs["beam_width"] == 1


def test_every_sampling_setting_is_mapped():
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=11, min_tokens=5, repetition_penalty=1.1,
                            frequency_penalty=0.5, presence_penalty=-0.25)
    assert mapping.sampling_kwargs(params) == {
        "beam_width": 1, "top_k": 40, "top_p": 0.9, "temperature": 0.7, "seed": 11, "min_tokens": 5,
        "repetition_penalty": 1.1, "presence_penalty": -0.25, "frequency_penalty": 0.5,
        "num_return_sequences": None}
    assert mapping.sampling_kwargs(SamplingParams(n=3))["num_return_sequences"] == 3


def test_plain_sampling_sends_top_p_so_the_executor_does_not_decode_greedily():
    # The Executor's defaults (top_k=0, top_p=0) mean greedy in its kernels.
    kwargs = mapping.sampling_kwargs(SamplingParams(), random_seed=5)
    assert {k for k, v in kwargs.items() if v is not None} == {"beam_width", "temperature", "top_p", "seed"}
    assert kwargs["top_p"] == 1.0 and kwargs["temperature"] == 1.0


def test_a_sampled_request_without_a_seed_gets_its_own():
    assert mapping.sampling_kwargs(SamplingParams(), random_seed=5)["seed"] == 5
    assert mapping.sampling_kwargs(SamplingParams(seed=3), random_seed=5)["seed"] == 3
    assert mapping.sampling_kwargs(SamplingParams(temperature=0.0), random_seed=5)["seed"] is None


def test_stop_ids_become_end_id_and_stop_words():
    kwargs = mapping.request_kwargs(SamplingParams(max_tokens=32, stop_token_ids=(EOT, EOS, EOM), logprobs=0))
    assert kwargs == {"max_tokens": 32, "streaming": True, "end_id": EOT, "pad_id": EOT,
                      "stop_words": [[EOS], [EOM]], "return_log_probs": True}
    assert mapping.request_kwargs(SamplingParams(stop_token_ids=(EOT,)))["stop_words"] is None


def _refusal(params, guided=True):
    return mapping.refusal(params, vocab_size=VOCAB, guided=guided)


def test_what_the_runtime_cannot_honour_is_a_client_error_naming_the_field():
    assert _refusal(SamplingParams(logprobs=0)) is None
    assert _refusal(SamplingParams(guide_kind="regex", guide="[0-9]+")) is None
    for params, guided, field in [(SamplingParams(logprobs=3), True, "top_logprobs"),
                                  (SamplingParams(guide_kind="json"), False, "response_format"),
                                  (SamplingParams(guide_kind="grammar-of-my-own"), True, "response_format"),
                                  (SamplingParams(logit_bias=((VOCAB, 1.0),)), True, "logit_bias")]:
        refused = _refusal(params, guided)
        assert isinstance(refused, ClientError) and refused.status == 400 and refused.param == field
        assert "tensorrt_llm engine (TensorRT-LLM 1.2.1)" in refused.message or field == "logit_bias"


def test_every_guide_kind_names_a_guide_type_of_the_bindings():
    from tests import fake_trtllm

    assert set(mapping.GUIDE_TYPES) == {"json", "json_schema", "regex", "ebnf", "structural_tag"}
    assert {getattr(fake_trtllm.GuidedDecodingParams.GuideType, name).name for name in mapping.GUIDE_TYPES.values()} \
        == {t.name for t in fake_trtllm.GuidedDecodingParams.GuideType}


def test_logit_bias_becomes_a_vocabulary_sized_float32_bias():
    bias = mapping.embedding_bias(SamplingParams(logit_bias=((3, 2.5), (7, -100.0))), VOCAB)
    assert bias.dtype == np.float32 and bias.shape == (VOCAB,)
    assert (bias[3], bias[7]) == (2.5, -100.0) and np.count_nonzero(bias) == 2
    assert mapping.embedding_bias(SamplingParams(), VOCAB) is None


def test_cache_salts_become_distinct_nonzero_ids():
    assert mapping.cache_salt_id(None) is None
    a, b = mapping.cache_salt_id("tenant-a"), mapping.cache_salt_id("tenant-b")
    assert a != b and 0 < a < 2 ** 63 and a == mapping.cache_salt_id("tenant-a")


def test_the_request_extra_ids_win_over_the_table_hash():
    ids = np.array([5, VOCAB, VOCAB + 1, 7])
    table = np.zeros((2, 4), np.float32)
    assert mapping.extra_ids(ids, np.array([0, 11, 11, 0]), table, VOCAB) == [0, 11, 11, 0]
    assert mapping.extra_ids(ids, None, table, VOCAB) == mapping.table_extra_ids(ids, table, VOCAB)
    with pytest.raises(ServerError, match="3 ids for a 4-token prompt"):
        mapping.extra_ids(ids, np.array([0, 1, 1]), table, VOCAB)


def test_guided_decoding_vocab_is_the_tokenizer_by_id(tiny_checkpoint, tmp_path):
    encoded, text = mapping.guided_decoding_vocab(tiny_checkpoint)
    spec = json.loads(text)
    assert text == (tiny_checkpoint / "tokenizer.json").read_text()
    for token, i in list(spec["model"]["vocab"].items())[:50]:
        assert encoded[i] == token
    for added in spec["added_tokens"]:
        assert encoded[added["id"]] == added["content"]
    assert mapping.guided_decoding_vocab(tmp_path) is None


def test_cached_tokens_come_from_the_reused_blocks():
    result = SimpleNamespace(request_perf_metrics=SimpleNamespace(kv_cache_metrics=SimpleNamespace(num_reused_blocks=3)))
    assert mapping.cached_tokens(result, 64, prompt_len=1000) == 192
    assert mapping.cached_tokens(result, 64, prompt_len=150) == 150
    assert mapping.cached_tokens(SimpleNamespace(request_perf_metrics=None), 64, prompt_len=150) == 0
    assert mapping.tokens_per_block({"build_config": {"plugin_config": {"tokens_per_block": 64}}}) == 64
    assert mapping.tokens_per_block({}) == 32


def test_prompt_table_rows_are_checked():
    ids = np.array([5, VOCAB, VOCAB + 1, 7], np.int32)
    table = np.ones((2, 8), np.float16)
    assert mapping.prompt_table(ids, table, VOCAB).dtype == np.float32
    assert mapping.prompt_table(np.array([5, 6]), None, VOCAB) is None
    with pytest.raises(ServerError, match="no prompt table"):
        mapping.prompt_table(ids, None, VOCAB)
    with pytest.raises(ServerError, match="row 2 of a 2-row"):
        mapping.prompt_table(np.array([VOCAB + 2]), table, VOCAB)


def test_extra_ids_tell_images_apart_for_cache_reuse():
    ids = np.array([5, VOCAB, VOCAB + 1, 7])
    a = mapping.table_extra_ids(ids, np.zeros((2, 4), np.float32), VOCAB)
    b = mapping.table_extra_ids(ids, np.ones((2, 4), np.float32), VOCAB)
    assert a[0] == a[3] == 0 and a[1] == a[2] >= 1 and a[1] != b[1]


def _live(**sampling):
    return mapping.LiveRequest("r1", prompt_len=12, params=SamplingParams(stop_token_ids=(EOT, EOS), **sampling))


def test_streamed_results_accumulate_and_hide_the_stop_token():
    live = _live()
    first = mapping.engine_output(live, [4, 5], final=False, reason_name="NOT_FINISHED")
    assert (first.token_ids, first.finish_reason, first.completion_tokens, first.prompt_tokens) == ([4, 5], None, 2, 12)
    last = mapping.engine_output(live, [6, EOS], final=True, reason_name="STOP_WORDS")
    # NIM's usage: the stop token is not a completion token.
    assert (last.token_ids, last.finish_reason, last.completion_tokens) == ([6], "stop", 3)


def test_an_end_id_the_executor_did_not_return_is_not_counted_either():
    live = _live()
    out = mapping.engine_output(live, [4], final=True, reason_name="END_ID")
    assert (out.token_ids, out.finish_reason, out.completion_tokens) == ([4], "stop", 1)


def test_a_final_result_without_a_reason_is_told_apart_by_its_length():
    live = mapping.LiveRequest("r1", prompt_len=3, params=SamplingParams(max_tokens=3, stop_token_ids=(EOT,)))
    assert mapping.engine_output(live, [4, 5, 6], final=True, reason_name=None).finish_reason == "length"
    assert mapping.engine_output(_live(), [4], final=True, reason_name="NOT_FINISHED").finish_reason == "stop"


def test_a_cancelled_request_ends_cancelled_whatever_its_last_reason():
    # A cancel can race a sequence's own end: its final response may say LENGTH, or nothing.
    live = _live()
    live.cancelled = True
    assert mapping.engine_output(live, [4], final=False, reason_name="NOT_FINISHED").finish_reason is None
    assert mapping.engine_output(live, [5], final=True, reason_name="LENGTH").finish_reason == "cancelled"


@pytest.mark.parametrize("name, reason", [("LENGTH", "length"), ("CANCELLED", "cancelled"), ("TIMED_OUT", "error")])
def test_finish_reasons(name, reason):
    out = mapping.engine_output(_live(), [4, 5], final=True, reason_name=name)
    assert out.finish_reason == reason and out.token_ids == [4, 5]


def test_logprobs_follow_the_shown_tokens():
    out = mapping.engine_output(_live(logprobs=0), [4, EOT], final=True, reason_name="END_ID",
                               log_probs=[-0.1, -0.2, -0.3])
    assert [lp.logprob for lp in out.logprobs] == [-0.2] and out.logprobs[0].top == []


def test_each_sequence_counts_and_finishes_on_its_own():
    live = _live(n=2)
    assert mapping.engine_output(live, [4], final=False, reason_name=None, sequence_index=1).completion_tokens == 1
    first = mapping.engine_output(live, [5, 6], final=True, reason_name="LENGTH", sequence_index=0)
    assert (first.sequence_index, first.completion_tokens, first.finish_reason) == (0, 2, "length")
    closing = mapping.closing_outputs(live, "error", "gone")
    assert [(o.sequence_index, o.completion_tokens, o.finish_reason) for o in closing] == [(1, 1, "error")]


def test_iteration_stats():
    kv = SimpleNamespace(max_num_blocks=200, used_num_blocks=50)
    stats = SimpleNamespace(num_active_requests=3, num_queued_requests=2, kv_cache_stats=kv)
    assert mapping.stats_from_iteration(stats) == (3, 2, 0.25)
    assert mapping.stats_from_iteration(SimpleNamespace(num_active_requests=0, num_queued_requests=0)) == (0, 0, 0.0)


def test_engine_world_size(tmp_path):
    with pytest.raises(ServerError, match="make engine"):
        mapping.engine_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"world_size": 2}}}))
    assert mapping.engine_world_size(mapping.engine_config(tmp_path)) == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed")
def test_selecting_the_engine_without_tensorrt_llm_fails_clearly(config, tmp_path):
    with pytest.raises(ServerError, match="needs TensorRT-LLM, which is not installed"):
        TrtLlmEngine(mapping.TrtLlmOptions(tmp_path), config, print)
    with pytest.raises(ServerError, match="needs TensorRT-LLM"):
        build_engine(EngineSettings(engine="tensorrt_llm", engine_dir=str(tmp_path)), config, print)
    with pytest.raises(ServerError, match="engine_dir"):
        build_engine(EngineSettings(engine="tensorrt_llm"), config, print)
