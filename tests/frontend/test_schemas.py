"""Request models: types and structure here, ranges in SamplingParams (nanovl/engine/request.py), whose error
becomes a 400 naming the request's own field before the request reaches a backend."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from frontend.schemas import ChatCompletionRequest, CompletionRequest
from frontend.settings import Settings
from nanovl.core.errors import ClientError
from nanovl.core.limits import DEFAULT_MAX_TOKENS, INT32_MAX, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS
from tests.frontend.fake_backend import ScriptedBackend

MODEL = Settings().model_name
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": MODEL, "prompt": "hi"}


@pytest.fixture(scope="module")
def served():
    backend = ScriptedBackend()
    with TestClient(create_app(Settings(), backend)) as client:
        yield client, backend


@pytest.mark.parametrize("body, param", [
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_tokens": INT32_MAX + 1}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens"),
    ({**CHAT, "min_tokens": DEFAULT_MAX_TOKENS + 1}, "min_tokens"),   # above the default max_tokens
    ({**CHAT, "temperature": 2.5}, "temperature"),
    ({**CHAT, "top_p": 0}, "top_p"),
    ({**CHAT, "top_k": -2}, "top_k"),
    ({**CHAT, "top_k": INT32_MAX + 1}, "top_k"),
    ({**CHAT, "seed": 2 ** 63}, "seed"),
    ({**CHAT, "frequency_penalty": -2.5}, "frequency_penalty"),
    ({**CHAT, "repetition_penalty": 0}, "repetition_penalty"),
    ({**CHAT, "stop": ["s"] * (MAX_STOP_STRINGS + 1)}, "stop"),
    ({**CHAT, "stop": ""}, "stop"),
    ({**CHAT, "logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS + 1}, "top_logprobs"),
    ({**CHAT, "top_logprobs": 2}, "top_logprobs"),                  # without logprobs: true
    ({**COMPLETION, "logprobs": 6}, "logprobs"),                    # the legacy endpoint's bound, 5
    ({**COMPLETION, "logprobs": -1}, "logprobs"),
    ({**COMPLETION, "max_tokens": -1}, "max_tokens"),
])
def test_a_value_out_of_range_is_a_400_naming_the_field_and_never_reaches_the_backend(served, body, param):
    client, backend = served
    before = len(backend.calls)
    response = client.post("/v1/completions" if "prompt" in body else "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and response.json()["error"]["type"] == "invalid_request_error"
    assert len(backend.calls) == before


def test_vllm_top_k_minus_one_is_off_and_reaches_the_backend_as_zero(served):
    client, backend = served
    assert client.post("/v1/chat/completions", json={**CHAT, "top_k": -1}).status_code == 200
    request = backend.calls[-1].request
    assert request.to_sampling_params().top_k == 0 and request.sampling_inputs()["top_k"] == 0


def test_only_the_fields_a_client_set_are_sent_so_the_llm_stage_keeps_its_defaults():
    request = ChatCompletionRequest(**CHAT, temperature=0.0, stop="x")
    assert request.sampling_inputs() == {"temperature": 0.0, "stop": ("x",)}
    # max_tokens left out: the llm stage picks what the context leaves, up to the default.
    assert request.to_sampling_params().max_tokens == DEFAULT_MAX_TOKENS


def test_max_completion_tokens_wins_over_max_tokens():
    request = ChatCompletionRequest(**CHAT, max_tokens=9, max_completion_tokens=3)
    assert request.sampling_inputs()["max_tokens"] == 3


def test_logprobs_map_to_the_number_of_alternatives():
    assert ChatCompletionRequest(**CHAT, logprobs=True).sampling_inputs()["logprobs"] == 0
    assert ChatCompletionRequest(**CHAT, logprobs=True, top_logprobs=3).sampling_inputs()["logprobs"] == 3
    assert "logprobs" not in ChatCompletionRequest(**CHAT).sampling_inputs()
    assert CompletionRequest(**COMPLETION, logprobs=2).sampling_inputs()["logprobs"] == 2


def test_the_engine_error_is_raised_by_the_model_itself():
    with pytest.raises(ClientError) as error:
        CompletionRequest(**COMPLETION, temperature=-1)
    assert error.value.param == "temperature"
