"""The HTTP layer on a scripted backend (tests/frontend/fake_backend.py), no server: SSE framing, the chunks'
OpenAI types, non-streamed answers, errors before and after the first delta, and clients that leave."""
from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from frontend import generation
from frontend.app import create_app
from frontend.backend import Delta
from frontend.errors import HTTPError
from frontend.settings import Settings
from nanovl.core.errors import ClientError, ServerError
from tests.frontend.fake_backend import ScriptedBackend, deltas

MODEL = Settings().model_name
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
USAGE = {"stream_options": {"include_usage": True}}


def post(backend: ScriptedBackend, path: str, body: dict):
    with TestClient(create_app(Settings(), backend)) as client:
        response = client.post(path, json=body)
        assert client.app.state.admission.idle   # every outcome gives its slot back
    assert backend.closed
    return response


def sse_events(response) -> list[str]:
    """The payloads of an SSE body, checking its framing: every event exactly `data: <payload>\\n\\n`."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    blocks = response.text[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), response.text
    return [block[len("data: "):] for block in blocks]


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_stream_is_role_contents_finish_usage_done(include_usage):
    events = sse_events(post(ScriptedBackend(deltas("Hel", "lo")), "/v1/chat/completions",
                             {**CHAT, "stream": True, **(USAGE if include_usage else {})}))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(event)) for event in events[:-1]]
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [chunk.choices[0].delta.content for chunk in chunks[1:3]] == ["Hel", "lo"]
    assert chunks[3].choices[0].finish_reason == "stop" and chunks[3].choices[0].delta.content is None
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:3])
    if include_usage:
        assert len(chunks) == 5 and chunks[4].choices == []
        assert (chunks[4].usage.prompt_tokens, chunks[4].usage.completion_tokens) == (5, 2)
    else:
        assert len(chunks) == 4 and all(chunk.usage is None for chunk in chunks)


def test_continuous_usage_stats_put_the_usage_so_far_on_every_chunk():
    # vLLM's stream_options.continuous_usage_stats: with include_usage, each chunk meters the stream.
    live = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    events = sse_events(post(ScriptedBackend(deltas("a", "b", "c")), "/v1/chat/completions",
                             {**CHAT, "stream": True, **live}))
    chunks = [ChatCompletionChunk.model_validate(json.loads(event)) for event in events[:-1]]
    counts = [(c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) for c in chunks]
    # role, a, b, c, finish, then the usage chunk
    assert counts == [(5, 0, 5), (5, 1, 6), (5, 2, 7), (5, 3, 8), (5, 3, 8), (5, 3, 8)]
    events = sse_events(post(ScriptedBackend(deltas("a", "b")), "/v1/completions",
                             {**COMPLETION, "stream": True, **live}))
    assert [json.loads(e)["usage"]["completion_tokens"] for e in events[:-1]] == [1, 2, 2]
    # Without include_usage (as vLLM) it does nothing.
    alone = {"stream_options": {"continuous_usage_stats": True}}
    events = sse_events(post(ScriptedBackend(deltas("a")), "/v1/chat/completions", {**CHAT, "stream": True, **alone}))
    assert all("usage" not in json.loads(event) for event in events[:-1])


def test_a_completion_stream_is_one_chunk_per_delta_then_usage_and_done():
    events = sse_events(post(ScriptedBackend(deltas("a", "b", finish_reason="length")), "/v1/completions",
                             {**COMPLETION, "stream": True, **USAGE}))
    assert events[-1] == "[DONE]"
    bodies = [json.loads(event) for event in events[:-1]]
    assert [b["choices"][0]["text"] for b in bodies[:2]] == ["a", "b"]
    assert [b["choices"][0]["finish_reason"] for b in bodies[:2]] == [None, "length"]
    assert bodies[2]["choices"] == [] and bodies[2]["usage"]["total_tokens"] == 7
    for body in bodies:
        # OpenAI's streams send finish_reason null until the last chunk, which openai's Completion type (made for
        # whole answers) does not allow: checked above, then the rest of the shape is the type's.
        choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in body["choices"]]
        assert Completion.model_validate({**body, "choices": choices}).object == "text_completion"


def test_streamed_logprobs_ride_on_their_chunks():
    entry = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
             "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}
    script = [Delta("Hi", [7], "stop", 3, 1, [entry])]
    events = sse_events(post(ScriptedBackend(script), "/v1/chat/completions",
                             {**CHAT, "stream": True, "logprobs": True, "top_logprobs": 1}))
    chunk = ChatCompletionChunk.model_validate(json.loads(events[1]))
    assert chunk.choices[0].logprobs.content[0].top_logprobs[0].logprob == -0.5


def test_a_non_streamed_chat_answer_joins_the_deltas():
    response = post(ScriptedBackend(deltas("Hel", "lo", finish_reason="length")), "/v1/chat/completions", CHAT)
    answer = ChatCompletion.model_validate(response.json())
    assert answer.choices[0].message.content == "Hello" and answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (5, 2, 7)
    assert answer.choices[0].logprobs is None


def test_a_non_streamed_completion_has_legacy_logprobs_with_text_offsets():
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
                "top_logprobs": [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]}
    script = [Delta("ab", [1], None, 2, 1, [entry("ab", -1.0)]), Delta("c", [2], "stop", 2, 2, [entry("c", -2.0)])]
    response = post(ScriptedBackend(script), "/v1/completions", {**COMPLETION, "logprobs": 1})
    answer = Completion.model_validate(response.json())
    assert answer.choices[0].text == "abc"
    logprobs = answer.choices[0].logprobs
    assert (logprobs.tokens, logprobs.token_logprobs, logprobs.text_offset) == (["ab", "c"], [-1.0, -2.0], [0, 2])
    assert logprobs.top_logprobs == [{"ab": -1.0}, {"c": -2.0}]


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_an_error_mid_stream_is_an_error_event_then_done(path, body):
    backend = ScriptedBackend(deltas("a", "b", "c"), error=HTTPError(504, "too slow", type_="timeout_error",
                                                                      code="request_timeout"), error_after=2)
    events = sse_events(post(backend, path, {**body, "stream": True}))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2]) == {"error": {"message": "too slow", "type": "timeout_error", "param": None,
                                                "code": "request_timeout"}}
    texts = [c["delta"].get("content") if "delta" in c else c["text"]
             for event in events[:-2] for c in json.loads(event)["choices"]]
    assert [t for t in texts if t] == ["a", "b"]
    assert backend.calls[0].finished and backend.calls[0].sent == 2


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("error, status, param", [
    (ClientError("the prompt is too long", param="messages", code="context_length_exceeded"), 400, "messages"),
    (HTTPError(503, "Triton is unavailable", type_="service_unavailable", code="triton_unavailable",
               headers={"Retry-After": "1"}), 503, None),
    (ServerError("generation ended: error"), 500, None),
])
def test_an_error_before_the_first_delta_is_a_plain_http_error(stream, error, status, param):
    response = post(ScriptedBackend(error=error, error_after=0), "/v1/chat/completions", {**CHAT, "stream": stream})
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["param"] == param and response.json()["error"]["message"] == error.message
    if status == 503:
        assert response.headers["retry-after"] == "1"


async def post_and_leave(app, path: str, body: dict, *, leave_after: int, stall: bool = False) -> list[bytes]:
    """POSTs through the ASGI interface as uvicorn does (spec 2.3: a disconnect is a `receive` message); the
    client leaves once it has `leave_after` body chunks; with `stall`, the send of the chunk that made it leave
    never returns (a full socket buffer). -> the chunks it got."""
    left, received, asked = asyncio.Event(), [], False
    if leave_after == 0:
        left.set()

    async def receive():
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            if len(received) >= leave_after:
                left.set()
                if stall:
                    await asyncio.Event().wait()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("test", 80)}
    await app(scope, receive, send)
    return received


@pytest.mark.parametrize("stream, stall", [(False, False), (True, False), (True, True)],
                         ids=["while-collecting", "between-deltas", "during-a-send"])
def test_a_client_that_leaves_stops_its_generation(stream, stall, monkeypatch):
    monkeypatch.setattr(generation, "DISCONNECT_POLL_S", 0.01)
    # The first delta comes, the second never does: only the client's leaving can end the generation.
    backend = ScriptedBackend(deltas("a", "b"), gate=asyncio.Event(), gate_after=1)
    app = create_app(Settings(), backend)

    async def run() -> None:
        # Streamed: the client leaves after the role chunk and "a"; not streamed: while the answer is collected.
        received = await post_and_leave(app, "/v1/chat/completions", {**CHAT, "stream": stream},
                                        leave_after=2 if stream else 0, stall=stall)
        # Checked before the loop runs anything else: a close left to the garbage collector would come later.
        call, = backend.calls
        assert call.closed_early and call.sent == 1 and not call.finished
        assert app.state.admission.idle
        assert b"[DONE]" not in b"".join(received)
    asyncio.run(run())
