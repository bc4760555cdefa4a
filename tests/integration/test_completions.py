"""POST /v1/completions end to end: a raw prompt through the ensemble's `prompt` input, no chat template."""
import asyncio
import json

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI

from nanovl.serving.client import TritonClient, TritonStreamError, bytes_tensor
from tests.conftest import hf_greedy
from tests.integration.conftest import MODEL

PROMPT = "The capital of France is"


def test_greedy_text_equals_transformers_generate_on_the_raw_prompt(openai_client, tokenizer, hf_llm, config):
    reply = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    ids = tokenizer(PROMPT).input_ids     # <|begin_of_text|> + the text, no chat template
    expected = hf_greedy(hf_llm, ids, 16, config.eos_token_ids)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].finish_reason == ("length" if len(expected) == 16 else "stop")


def test_streamed_text_equals_the_non_streamed_text(openai_client):
    whole = openai_client.completions.create(model=MODEL, prompt=[PROMPT], max_tokens=24, temperature=0)
    chunks = list(openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_async_sdk_streams_and_sampling_fields_apply(stack):
    async def run():
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="unused", max_retries=0)
        common = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0.9, seed=3, top_p=0.9,
                      extra_body={"min_tokens": 12})
        whole = await client.completions.create(**common)
        stream = await client.completions.create(**common, stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        await client.close()
        return whole, text
    whole, text = asyncio.run(run())
    assert whole.usage.completion_tokens == 12 and text == whole.choices[0].text


def test_logprobs_in_the_legacy_shape(openai_client):
    reply = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) >= 1
    assert all(len(alternatives) <= 2 for alternatives in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


def test_raw_sse_and_a_stop_string(stack, openai_client):
    full = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0).choices[0].text
    # A stop string from plain letters: the random model's text also holds U+FFFD for split bytes.
    stop = next(full[i:i + 3] for i in range(3, len(full)) if full[i:i + 3].isascii() and full[i:i + 3].isalpha())
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stream": True, "stop": stop}
    with httpx.stream("POST", f"http://127.0.0.1:{stack.port}/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[:full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("inputs", [{}, {"messages": '[{"role": "user", "content": "x"}]', "prompt": "x"}])
def test_the_ensemble_wants_exactly_one_of_messages_and_prompt(stack, inputs):
    async def run():
        client = TritonClient(f"127.0.0.1:{stack.grpc_port}")
        tensors = {name: bytes_tensor(text) for name, text in inputs.items()}
        tensors["max_tokens"] = np.array([2], np.int32)
        try:
            async for _ in client.stream("ensemble", tensors):
                pass
        finally:
            await client.close()
    with pytest.raises(TritonStreamError, match="exactly one of messages"):
        asyncio.run(run())
