"""Bounded concurrency, timeouts and metrics with real generations: in-process frontends with their own
settings (tests/integration/conftest.py make_frontend) on the session's tritonserver."""
import re
import threading
import time

from tests.integration.conftest import MODEL
from tests.integration.test_generation import wait_until_idle

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 400, "min_tokens": 400}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def wait_for(predicate, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def in_background(client, body) -> tuple[threading.Thread, list]:
    result = []
    thread = threading.Thread(target=lambda: result.append(client.post("/v1/chat/completions", json=body)))
    thread.start()
    return thread, result


def test_past_the_queue_a_request_gets_429_at_once_and_the_queued_one_is_served(make_frontend):
    client = make_frontend(max_concurrency=1, max_queue=1)
    admission = client.app.state.admission
    running, first = in_background(client, LONG)
    wait_for(lambda: admission.running == 1)
    queued, second = in_background(client, SHORT)
    wait_for(lambda: admission.waiting == 1)
    started = time.monotonic()
    refused = client.post("/v1/chat/completions", json=SHORT)
    assert refused.status_code == 429 and time.monotonic() - started < 1
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "server_busy"
    running.join(60)
    queued.join(60)
    assert first[0].status_code == 200 and second[0].status_code == 200
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_generation_past_the_timeout_is_504_and_frees_its_slot(make_frontend, stack):
    client = make_frontend(request_timeout_s=0.5, max_concurrency=1)
    body = {**LONG, "max_tokens": 5000, "min_tokens": 5000}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 504 and response.json()["error"]["code"] == "request_timeout"
    streamed = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5000,
                                                     "min_tokens": 5000, "stream": True})
    events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert '"request_timeout"' in events[-2] and events[-1] == "data: [DONE]"
    assert client.app.state.admission.running == 0
    assert wait_until_idle(stack) < 5     # the frontend's stop reached llm: its engine slots are free


def test_metrics_measure_real_generations(make_frontend):
    client = make_frontend()
    for stream in (False, True):
        assert client.post("/v1/chat/completions", json={**SHORT, "max_tokens": 8, "min_tokens": 8,
                                                         "stream": stream}).status_code == 200
    text = client.get("/v1/metrics").text

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))
    assert value("nanovl_generation_tokens_total") == 16
    assert value("nanovl_prompt_tokens_total") > 0
    assert value("nanovl_time_to_first_token_seconds_count") == 2
    assert value("nanovl_e2e_request_latency_seconds_count") == 2
    assert value("nanovl_inter_token_latency_seconds_count") >= 1
    assert 'nanovl_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in text
    assert value("nanovl_requests_running") == 0
