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
from nanovl.core.errors import ServerError

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
        "repetition_penalty": 1.1, "presence_penalty": -0.25, "frequency_penalty": 0.5}


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


def test_top_logprobs_are_refused_clearly():
    assert mapping.unsupported(SamplingParams(logprobs=0)) is None
    assert "top_logprobs" in mapping.unsupported(SamplingParams(logprobs=3))


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
    # TensorRT-LLM 0.14 has no CANCELLED reason: the final response of a cancelled request says LENGTH or nothing.
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
