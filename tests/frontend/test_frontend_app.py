"""The frontend in-process, with no tritonserver behind it: everything it must answer on its own (auth, limits,
validation, errors when Triton is down, metrics, version, docs, CORS)."""
import asyncio
import logging

import pytest
from fastapi.testclient import TestClient

from frontend.admission import Admission
from frontend.app import create_app
from frontend.errors import HTTPError
from frontend.settings import Settings

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY = {"Authorization": "Bearer sesame"}


@pytest.fixture(scope="module")
def client():
    # Port 9 (discard) has no Triton: every generation meets a Triton that is down.
    settings = Settings(triton_url="127.0.0.1:9", api_key="sesame", max_body_bytes=4096,
                        cors_origins=("https://app.example",))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def assert_openai_error(response, status: int, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}])
def test_the_api_key_is_required_when_set(client, headers):
    for path in ("/v1/models", "/v1/chat/completions", "/v1/completions"):
        response = client.request("GET" if path == "/v1/models" else "POST", path, json=CHAT, headers=headers)
        assert_openai_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"


def test_probes_metrics_version_and_docs_need_no_key(client):
    for path in ("/v1/health/live", "/v1/metrics", "/metrics", "/v1/version", "/v1/metadata", "/docs",
                 "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/v1/models", headers=KEY).json()["data"][0]["id"] == MODEL


def test_metrics_are_also_where_prometheus_looks_first(client):
    # /metrics: Prometheus' default path, which vLLM serves and aiperf scrapes.
    ours, root = client.get("/v1/metrics"), client.get("/metrics")
    assert root.headers["content-type"] == ours.headers["content-type"]
    assert "nanovl_requests_total" in root.text and "nanovl_time_to_first_token_seconds" in root.text


def test_version_and_metadata_have_nims_shapes(client):
    assert set(client.get("/v1/version").json()) == {"release", "api"}
    metadata = client.get("/v1/metadata").json()
    assert metadata["modelInfo"][0]["shortName"] == MODEL and "version" in metadata


def test_openapi_lists_both_generation_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/metrics"} <= set(paths)


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2 ** 40}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_k": 2 ** 33}, "top_k"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "echo": True}, "echo"),
    ({"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": MODEL, "prompt": "x", "best_of": 2}, "best_of"),
    ({"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
])
def test_malformed_requests_are_400_naming_the_field(client, body, param):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    assert assert_openai_error(client.post(path, json=body, headers=KEY), 400)["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "m", "max_tokens": NaN, "prompt": "x"}', b"[1, 2]"])
def test_bodies_that_are_not_a_json_object_are_400(client, raw):
    response = client.post("/v1/completions", content=raw, headers={**KEY, "content-type": "application/json"})
    assert_openai_error(response, 400)


def test_an_oversized_body_is_413_with_or_without_a_length(client):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(client.post("/v1/chat/completions", json=big, headers=KEY), 413, "request_too_large")

    def chunks():
        yield b'{"model": "m", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'
    response = client.post("/v1/completions", content=chunks(), headers={**KEY, "content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")


def test_triton_down_is_503_with_retry_after(client):
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": MODEL, "prompt": "x"})):
        response = client.post(path, json=body, headers=KEY)
        assert_openai_error(response, 503, "triton_unavailable")
        assert response.headers["retry-after"] == "1"
    assert client.get("/v1/health/ready").status_code == 503


def test_unknown_model_and_unknown_route_are_404(client):
    assert_openai_error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}, headers=KEY), 404,
                        "model_not_found")
    assert_openai_error(client.get("/v1/nothing-here", headers=KEY), 404)


def test_cors_preflight_and_headers(client):
    preflight = client.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/v1/version", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_each_request_has_an_id_and_one_log_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="nanovl.frontend"):
        response = client.post("/v1/chat/completions", json=CHAT, headers=KEY)
    request_id = response.headers["x-request-id"]
    lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert len(lines) == 1 and "POST /v1/chat/completions 503" in lines[0]


def test_metrics_count_requests_by_endpoint_and_status(client):
    client.get("/v1/nothing-here")
    client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}, headers=KEY)
    text = client.get("/v1/metrics").text
    assert 'nanovl_requests_total{endpoint="/v1/chat/completions",status="404"}' in text
    assert 'nanovl_requests_total{endpoint="other",status="404"}' in text   # no label per unknown path
    for name in ("nanovl_time_to_first_token_seconds_bucket", "nanovl_inter_token_latency_seconds_bucket",
                 "nanovl_e2e_request_latency_seconds_bucket", "nanovl_prompt_tokens_total",
                 "nanovl_generation_tokens_total", "nanovl_requests_running", "nanovl_requests_waiting"):
        assert name in text


def test_settings_come_from_the_environment():
    settings = Settings.from_env({"NANOVL_MAX_CONCURRENCY": "3", "NANOVL_API_KEY": "k", "NANOVL_MAX_QUEUE": "0",
                                  "NANOVL_CORS_ORIGINS": "https://a, https://b", "NANOVL_REQUEST_TIMEOUT_S": "2.5"})
    assert (settings.max_concurrency, settings.api_key, settings.max_queue, settings.request_timeout_s) == \
        (3, "k", 0, 2.5)
    assert settings.cors_origins == ("https://a", "https://b")
    assert Settings.from_env({}) == Settings()


def test_admission_queues_then_refuses_at_once():
    async def run():
        admission = Admission(max_running=1, max_waiting=1)
        await admission.acquire()
        queued = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert (admission.running, admission.waiting) == (1, 1)
        with pytest.raises(HTTPError) as refused:
            await admission.acquire()
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
        admission.release()
        await queued
        assert (admission.running, admission.waiting) == (1, 0)
        admission.release()
    asyncio.run(run())


def test_no_log_line_carries_image_bytes(client, caplog):
    image = "data:image/png;base64," + "QUJDRA" * 50
    body = {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
            "surprise_field": image}
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/chat/completions", json=body, headers=KEY)
        client.post("/v1/chat/completions", json={**body, "temperature": "hot"}, headers=KEY)
    assert caplog.records and not any("QUJDRA" in r.getMessage() for r in caplog.records)
