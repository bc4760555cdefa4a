"""Property tests of the request JSON: the FastAPI app in-process, no tritonserver behind it (as in
test_frontend_app.py). Any value in any field gives a status below 500 with OpenAI's error body when it is 400
or more; a request that passes validation meets the Triton that is not there, a 503 `triton_unavailable`."""
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings, strategies as st

from frontend.app import create_app
from frontend.settings import Settings

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
               "stop", "min_tokens", "frequency_penalty", "presence_penalty", "repetition_penalty", "n", "stream",
               "stream_options", "user", "logprobs", "top_logprobs", "tools", "response_format", "logit_bias"]
COMPLETION_FIELDS = [f for f in CHAT_FIELDS if f not in ("messages", "max_completion_tokens", "top_logprobs")] + [
    "prompt", "echo", "suffix", "best_of"]
BASE = {"/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 2}}

# Any JSON value, the edges included: huge and negative integers, floats, NUL, lone surrogates ("\ud800" is JSON).
texts = st.text(max_size=12) | st.text(st.sampled_from(["a", " ", "\x00", "\ud800", "\udc00", "é", "\U0001f600"]),
                                       max_size=4)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=False, allow_infinity=False) | texts
           | st.sampled_from([MODEL, "", "\ud800", 0, -1, 1, 2 ** 31, 2 ** 63, 1e308, -0.0, 0.5, 20, 21]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


@pytest.fixture(scope="module")
def client():
    # Port 9 (discard) has no Triton: a valid request ends in a 503, as in test_frontend_app.py.
    with TestClient(create_app(Settings(triton_url="127.0.0.1:9", max_body_bytes=65536))) as test_client:
        yield test_client


def assert_clean(response):
    assert response.status_code < 500 or (
        response.status_code == 503 and response.json()["error"]["code"] == "triton_unavailable"), response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
        assert error["message"] and isinstance(error["type"], str)


# A lone surrogate in `model`, `stop` or `prompt` was a 500 (UnicodeEncodeError) until the schemas refused it.
LONE_SURROGATES = [
    ("/v1/chat/completions", {**BASE["/v1/chat/completions"], "stop": "\ud800"}),
    ("/v1/completions", {**BASE["/v1/completions"], "stop": ["x", "\udc00"]}),
    ("/v1/completions", {**BASE["/v1/completions"], "prompt": "a\ud800"}),
    ("/v1/completions", {**BASE["/v1/completions"], "prompt": ["\ud800"]}),
    ("/v1/chat/completions", {**BASE["/v1/chat/completions"], "model": "gpt\ud800"}),
]


def post(client, path: str, body) -> None:
    raw = json.dumps(body).encode()   # ensure_ascii: lone surrogates travel as \ud800, as a client may send them
    assert_clean(client.post(path, content=raw, headers={"content-type": "application/json"}))


@FAST
@given(st.sampled_from(sorted(BASE)), st.data())
def test_any_value_in_any_field_is_served_or_a_clean_4xx(client, path, data):
    fields = CHAT_FIELDS if path == "/v1/chat/completions" else COMPLETION_FIELDS
    changed = data.draw(st.dictionaries(st.sampled_from(fields), json_values, min_size=1, max_size=3), label="fields")
    dropped = data.draw(st.sets(st.sampled_from(sorted(BASE[path]))), label="dropped")
    body = {**{k: v for k, v in BASE[path].items() if k not in dropped}, **changed}
    post(client, path, body)


@FAST
@given(st.sampled_from(sorted(BASE)), st.data())
def test_one_field_at_a_time_is_served_or_a_clean_4xx(client, path, data):
    """One field changed on a valid body: more bodies pass validation and reach the conversion to tensors."""
    fields = CHAT_FIELDS if path == "/v1/chat/completions" else COMPLETION_FIELDS
    name = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(texts | st.lists(texts, max_size=5) | json_values, label="value")
    post(client, path, {**BASE[path], name: value})


message_values = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | json_values,
     "content": json_values | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                               "text": json_values, "image_url": json_values}))}),
    max_size=3)


@FAST
@given(message_values | json_values)
def test_any_messages_are_served_or_a_clean_4xx(client, messages):
    post(client, "/v1/chat/completions", {**BASE["/v1/chat/completions"], "messages": messages})


@FAST
@given(json_values)
@example({"model": MODEL, "prompt": "hi", "stream": True, "stream_options": {"include_usage": "yes"}})
def test_any_json_body_is_served_or_a_clean_4xx(client, body):
    for path in BASE:
        post(client, path, body)


@FAST
@given(st.binary(max_size=200), st.sampled_from(["application/json", "text/plain", ""]))
def test_any_bytes_as_a_body_are_a_clean_4xx(client, raw, content_type):
    for path in BASE:
        response = client.post(path, content=raw, headers={"content-type": content_type} if content_type else {})
        assert_clean(response)


@pytest.mark.parametrize("path, body", LONE_SURROGATES)
def test_lone_surrogates_in_model_stop_prompt_are_a_400_naming_the_field(client, path, body):
    raw = json.dumps(body).encode()
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_clean(response)
    assert response.status_code == 400 and response.json()["error"]["param"] in ("model", "stop", "prompt")
