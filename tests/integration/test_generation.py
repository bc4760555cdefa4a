"""The llm stage through the real stack: stop strings, logprobs, penalties, streaming detokenization,
and cancellation that frees engine slots on tritonserver 2.51."""
import asyncio
import json
import re
import time

import httpx
import numpy as np
import pytest

from nanovl.serving.client import TritonClient, bytes_tensor
from tests.integration.conftest import MODEL


def engine_gauge(stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def wait_until_idle(stack, deadline_s: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if engine_gauge(stack, "nanovl_engine_running_sequences") == 0 and \
                engine_gauge(stack, "nanovl_engine_waiting_sequences") == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"engine still busy after {deadline_s} s")


def greedy(openai_client, text, **kw):
    return openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                                 temperature=0, **kw)


def test_stop_string_cuts_the_text_and_ends_with_stop(openai_client):
    full = greedy(openai_client, "Tell me about the chart.", max_tokens=40).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), full
    cut = greedy(openai_client, "Tell me about the chart.", max_tokens=40, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = greedy(openai_client, "Tell me about the chart.", max_tokens=40, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[:full.index(stop)]


def test_logprobs_come_per_token_with_alternatives(openai_client):
    reply = greedy(openai_client, "hello", max_tokens=8, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert 1 <= len(content) <= reply.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token          # greedy takes the best
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    assert "".join(bytes(b for e in content for b in e.bytes).decode("utf-8", errors="replace")) == \
        reply.choices[0].message.content
    chunks = list(greedy(openai_client, "hello", max_tokens=8, logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_penalties_and_min_tokens_are_honoured(openai_client):
    # The penalties change only a choice of a token already seen. The random model over Llama 3.1's 128k tokens
    # seldom makes one ('la la la' never does in 30 tokens); on this prompt its greedy answer repeats a token.
    plain = greedy(openai_client, "the the the", max_tokens=30)
    penalized = greedy(openai_client, "the the the", max_tokens=30, frequency_penalty=2.0, presence_penalty=2.0,
                       extra_body={"repetition_penalty": 1.5})
    assert penalized.choices[0].message.content != plain.choices[0].message.content
    at_least = greedy(openai_client, "hi", max_tokens=12, extra_body={"min_tokens": 12})
    assert at_least.usage.completion_tokens == 12 and at_least.choices[0].finish_reason == "length"


def test_streamed_text_is_the_decode_of_the_streamed_ids(stack, tokenizer):
    """Random sampling of the random model emits split multi-byte characters and specials: the deltas,
    each made by the detokenizer from its own response, still add up to the one-shot decode."""
    async def run():
        client = TritonClient(f"127.0.0.1:{stack.grpc_port}")
        inputs = {"messages": bytes_tensor(json.dumps([{"role": "user", "content": "東京 🙂 café"}])),
                  "max_tokens": np.array([300], np.int32), "temperature": np.array([1.5], np.float32),
                  "seed": np.array([7], np.int64)}
        texts, ids = [], []
        async for out in client.stream("ensemble", inputs):
            if "text_output" in out:
                texts.append(out["text_output"][0].decode())
                ids += out["token_ids"].tolist()
        await client.close()
        return "".join(texts), ids
    text, ids = asyncio.run(run())
    assert len(ids) > 20
    assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_dropped_streams_free_the_engine_and_a_new_request_is_served_at_once(stack, openai_client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 5000,
            "temperature": 1.0, "stream": True, "min_tokens": 5000}

    async def open_and_drop():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", timeout=30) as client:
            async def one():
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if '"content"' in line and '"content":""' not in line:
                            return True   # leaving the block closes the connection mid-stream
            return await asyncio.gather(*(one() for _ in range(16)))
    assert all(asyncio.run(open_and_drop()))
    assert wait_until_idle(stack) < 5
    started = time.monotonic()
    reply = greedy(openai_client, "still there?", max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length") and time.monotonic() - started < 5


def test_a_cancelled_direct_grpc_stream_frees_its_slot(stack):
    """No frontend: the client cancels its ensemble stream; the detokenizer sees it and stops llm."""
    async def run():
        client = TritonClient(f"127.0.0.1:{stack.grpc_port}")
        inputs = {"messages": bytes_tensor(json.dumps([{"role": "user", "content": "long"}])),
                  "max_tokens": np.array([5000], np.int32), "min_tokens": np.array([5000], np.int32)}
        streams = [client.stream("ensemble", inputs, request_id=f"direct-{i}") for i in range(4)]
        for stream in streams:
            await anext(stream)
        for stream in streams:
            await stream.aclose()   # cancels the gRPC call
        await asyncio.sleep(0.2)
        await client.close()
    asyncio.run(run())
    assert wait_until_idle(stack) < 8
