"""Slow and vanishing clients against the real stack: connections that stall inside the headers or half-way
through a body, and a streaming client that stops reading, must not hold up anybody else's request."""
import json
import socket
import time

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.test_generation import engine_gauge, wait_until_idle

STALLERS = 8
BOUND_S = 10.0   # another client's whole request, while the stallers hold their connections


def chat_body(**extra) -> dict:
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}


def stalled_connection(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head)
    return sock


def half_a_body(port: int) -> bytes:
    body = json.dumps(chat_body()).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body[: len(body) // 2]


HALF_HEADERS = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-ty"


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def others_complete(stack, openai_client) -> None:
    """A chat with the OpenAI SDK, a streamed one with httpx, and a probe: each well within BOUND_S."""
    def sdk():
        reply = openai_client.chat.completions.create(**chat_body(), timeout=BOUND_S)
        assert reply.choices[0].finish_reason in ("stop", "length")

    def streamed():
        with httpx.stream("POST", f"http://127.0.0.1:{stack.port}/v1/chat/completions",
                          json=chat_body(stream=True), timeout=BOUND_S) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert response.status_code == 200 and lines[-1] == "data: [DONE]"

    def probe():
        assert httpx.get(f"http://127.0.0.1:{stack.port}/v1/health/live", timeout=BOUND_S).status_code == 200

    for check in (sdk, streamed, probe):
        assert timed(check) < BOUND_S, check.__name__


@pytest.mark.parametrize("head", ["half_headers", "half_body"])
def test_stalled_uploads_do_not_hold_up_other_clients(stack, openai_client, head):
    heads = {"half_headers": HALF_HEADERS, "half_body": half_a_body(stack.port)}
    stallers = [stalled_connection(stack.port, heads[head]) for _ in range(STALLERS)]
    try:
        time.sleep(0.3)   # let the server take every staller's bytes in
        others_complete(stack, openai_client)
        for sock in stallers:   # still held open by the server: the test measured what it meant to
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in stallers:
            sock.close()
    others_complete(stack, openai_client)


def test_streams_nobody_reads_do_not_slow_down_others_and_free_their_slots(stack, openai_client):
    """Streams whose clients read one byte and then stop: with 20 top logprobs a token is ~1 KB of SSE, so the
    socket buffers fill within the stream and the server's writes block, for those streams only. Closed, they
    leave the engine."""
    body = json.dumps(chat_body(max_tokens=3000, min_tokens=3000, stream=True, logprobs=True,
                                top_logprobs=20)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body)) + body
    readers = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        assert sock.recv(1)   # the stream started; from now on nobody reads
        readers.append(sock)
    try:
        time.sleep(1.0)
        others_complete(stack, openai_client)
        assert engine_gauge(stack, "nanovl_engine_running_sequences") >= 1   # still held while others were served
    finally:
        for sock in readers:
            sock.close()
    wait_until_idle(stack, deadline_s=15)
    others_complete(stack, openai_client)


def test_a_very_slow_reader_gets_its_whole_stream_while_others_are_served(stack, openai_client):
    import threading

    events: list[str] = []

    def slow_reader():
        with httpx.stream("POST", f"http://127.0.0.1:{stack.port}/v1/chat/completions",
                          json=chat_body(max_tokens=40, min_tokens=40, stream=True), timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    time.sleep(0.1)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        others_complete(stack, openai_client)
    finally:
        reader.join(timeout=60)
    assert events[-1] == "[DONE]"
    finish = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
    assert finish[-1] == "length"


def test_connections_past_the_limit_get_a_503_at_once(stack):
    """Stalled connections cost memory for as long as they stay (uvicorn has no header timeout): their
    number is capped (NANOVL_MAX_CONNECTIONS), and past it a new one is refused at once."""
    import subprocess
    import sys

    from nanovl.serving.launch import ROOT, free_port, server_env, wait_for_http

    port = free_port()
    frontend = subprocess.Popen([sys.executable, "-m", "frontend", "--port", str(port)], cwd=ROOT,
                                env=server_env({"NANOVL_TRITON_URL": f"127.0.0.1:{stack.grpc_port}",
                                                "NANOVL_MAX_CONNECTIONS": "8"}))
    stalled = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/health/live", deadline_s=60, process=frontend)
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")   # never finishes its headers
            stalled.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{port}/v1/health/live", timeout=10)
        assert response.status_code == 503 and time.monotonic() - started < 2
        for sock in stalled:
            sock.close()
        stalled.clear()
        time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health/live", timeout=10).status_code == 200
    finally:
        for sock in stalled:
            sock.close()
        frontend.terminate()
        frontend.wait(timeout=30)
