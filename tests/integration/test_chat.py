"""End to end through frontend -> Triton gRPC -> ensemble (all four stages) -> back, with the OpenAI SDK."""
import asyncio
import json

import httpx
import pytest
from openai import BadRequestError, NotFoundError

from tests.conftest import chat_ids, hf_greedy
from tests.core.test_prompt import ANSWER, Q1, Q2
from tests.integration.conftest import MODEL, data_url


def test_models_list(openai_client):
    assert [m.id for m in openai_client.models.list()] == [MODEL]


@pytest.mark.parametrize("text", ["Hello there", "What is written on the sign?"])
def test_greedy_text_equals_transformers_generate(openai_client, tokenizer, hf_llm, config, text):
    reply = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                                  max_tokens=20, temperature=0)
    ids = chat_ids(tokenizer, text)
    expected = hf_greedy(hf_llm, ids, 20, config.eos_token_ids)
    assert reply.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(ids)
    # NIM's usage: the eos that ended a stopped answer is not a completion token.
    assert reply.usage.completion_tokens == len(expected)
    assert reply.choices[0].finish_reason == ("length" if len(expected) == 20 else "stop")


def test_streamed_deltas_concatenate_to_the_non_streamed_text(openai_client):
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    whole = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
    chunks = list(openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40,
                                                        temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_image_request_counts_image_tokens(openai_client, config):
    content = [{"type": "image_url", "image_url": {"url": data_url(640, 480)}},
               {"type": "text", "text": "Describe the image."}]
    reply = openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                  max_tokens=5, temperature=0)
    text_only = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "<img></img>\nDescribe the image."}],
        max_tokens=1, temperature=0)
    # 640x480 -> a 4x3 grid plus thumbnail = 13 tiles of 256 embeddings between <img> and </img>.
    assert reply.usage.prompt_tokens == text_only.usage.prompt_tokens + 13 * config.tokens_per_tile
    assert reply.usage.completion_tokens >= 1


def test_nims_documented_requests_report_nims_prompt_tokens(openai_client):
    # NIM's usage for its documented request (one 13-tile image, then the question) and its follow-up; ANSWER
    # stands in for the page's 126-token answer (tests/core/test_prompt.py says why).
    turn = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(2048, 1536)}},
                                        {"type": "text", "text": Q1}]}
    first = openai_client.chat.completions.create(model=MODEL, messages=[turn], max_tokens=2, temperature=0)
    follow_up = openai_client.chat.completions.create(
        model=MODEL, messages=[turn, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": Q2}],
        max_tokens=2, temperature=0)
    assert (first.usage.prompt_tokens, follow_up.usage.prompt_tokens) == (3372, 3517)


def test_image_streamed_equals_non_streamed(openai_client):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(300, 200)}},
                                             {"type": "text", "text": "What colour?"}]}]
    whole = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    stream = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0,
                                                   stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content


def test_unknown_model_is_404(openai_client):
    with pytest.raises(NotFoundError) as info:
        openai_client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("payload, match", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     "image 0: the data URL is not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,aGVsbG8="}}]}]}, "image 0: not a decodable image"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10 ** 6}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 17}, "n must be between 1 and 16"),
])
def test_bad_requests_are_400_and_the_server_keeps_serving(openai_client, payload, match):
    with pytest.raises(BadRequestError) as info:
        openai_client.chat.completions.create(model=MODEL, **payload)
    assert match in info.value.message
    assert openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok"}],
                                                 max_tokens=2).choices


def test_malformed_json_is_400(stack):
    response = httpx.post(f"http://127.0.0.1:{stack.port}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_health(stack):
    base = f"http://127.0.0.1:{stack.port}/v1/health"
    assert httpx.get(f"{base}/live").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200


def test_raw_sse_stream_ends_with_done(stack):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"http://127.0.0.1:{stack.port}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_async_sdk_streamed_and_not(stack):
    from openai import AsyncOpenAI

    async def run():
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(120, 90)}},
                                                 {"type": "text", "text": "What is it?"}]}]
        whole, stream = await asyncio.gather(
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0),
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                           stream=True))
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return whole, text
    whole, text = asyncio.run(run())
    assert whole.choices[0].message.content == text and whole.usage.completion_tokens >= 1
