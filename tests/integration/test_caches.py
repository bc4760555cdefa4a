"""The caches and n choices through the whole stack: a cache changes no answer, hits are reported in usage
and in the metrics, and n choices come back indexed, reproducible and summed in usage."""
import re

import httpx
import pytest

from nanovl.serving.triton_config import write_repository
from tests.integration.conftest import MODEL, data_url, stack_on_free_ports

CACHES_OFF = {"enable_kv_cache_reuse": "false", "image_embedding_cache_bytes": "0", "image_cache_entries": "0"}


@pytest.fixture(scope="module")
def uncached(tiny_checkpoint, tmp_path_factory):
    """A second stack with every cache off -> its OpenAI client."""
    from openai import OpenAI

    repository = tmp_path_factory.mktemp("uncached") / "model_repository"
    write_repository(repository, CACHES_OFF)
    server = stack_on_free_ports(tiny_checkpoint, repository=repository)
    server.start(deadline_s=180)
    yield OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
    server.stop()


def metric(stack, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def conversation(client, image_url, turns=3, salt=None):
    """The NIM docs' multi-turn shape: every turn sends the whole conversation, the image in its first message,
    again -> [(answer, usage)]."""
    messages, out = [], []
    for turn in range(turns):
        content = [{"type": "image_url", "image_url": {"url": image_url}}] if turn == 0 else []
        messages.append({"role": "user", "content": content + [{"type": "text", "text": f"Turn {turn}?"}]})
        extra = {"cache_salt": salt} if salt else {}
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                               extra_body=extra)
        answer = reply.choices[0].message.content
        messages.append({"role": "assistant", "content": answer})
        out.append((answer, reply.usage))
    return out


def test_a_multi_turn_image_conversation_answers_the_same_with_caches_on_and_off(openai_client, uncached, stack):
    hits, queries = (metric(stack, f"nanovl_image_embedding_cache_{k}_total") for k in ("hits", "queries"))
    image_a, image_b = data_url(700, 500, (10, 120, 200)), data_url(700, 500, (200, 120, 10))   # same size
    cached = conversation(openai_client, image_a) + conversation(openai_client, image_b)
    plain = conversation(uncached, image_a) + conversation(uncached, image_b)
    assert [answer for answer, _ in cached] == [answer for answer, _ in plain]
    assert all(usage.prompt_tokens_details.cached_tokens == 0 for _, usage in plain)
    first, second, third = (usage for _, usage in cached[:3])
    assert first.prompt_tokens_details.cached_tokens < 32   # image A is new: at most the text before it
    assert second.prompt_tokens_details.cached_tokens >= first.prompt_tokens - 16
    assert third.prompt_tokens_details.cached_tokens >= second.prompt_tokens - 16
    assert cached[3][1].prompt_tokens_details.cached_tokens < 32   # image B shares no block of image A's
    assert metric(stack, "nanovl_image_embedding_cache_hits_total") - hits >= 4        # turns 2 and 3 of each
    assert metric(stack, "nanovl_image_embedding_cache_queries_total") - queries >= 6
    assert metric(stack, "nanovl_prefix_cache_hits_total") > 0
    assert metric(stack, "nanovl_image_embedding_cache_bytes") > 0


def test_cache_salt_keeps_a_tenants_prompt_apart(openai_client):
    salted = conversation(openai_client, data_url(300, 300, (1, 2, 3)), turns=2, salt="tenant-x")
    other = conversation(openai_client, data_url(300, 300, (1, 2, 3)), turns=1, salt="tenant-y")
    assert salted[1][1].prompt_tokens_details.cached_tokens > 0
    assert other[0][1].prompt_tokens_details.cached_tokens < 32
    assert other[0][0] == salted[0][0]


def test_n_choices_with_a_seed_are_indexed_reproducible_and_summed(openai_client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Tell a story."}], max_tokens=10, temperature=1.0,
               seed=42, n=4, extra_body={"min_tokens": 10})
    first, again = openai_client.chat.completions.create(**ask), openai_client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices] and len(set(texts)) > 1
    single = openai_client.chat.completions.create(**{**ask, "n": 1})
    assert single.choices[0].message.content == texts[0]
    assert first.usage.prompt_tokens == single.usage.prompt_tokens
    streamed = list(openai_client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    by_choice, finished = {}, {}
    for chunk in streamed:
        for choice in chunk.choices:
            by_choice[choice.index] = by_choice.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert [by_choice[i] for i in range(4)] == texts and sorted(finished) == [0, 1, 2, 3]
    assert streamed[-1].usage.completion_tokens == first.usage.completion_tokens == 4 * 10   # summed over choices


def test_n_greedy_choices_equal_the_single_answer_on_both_endpoints(openai_client):
    chat = dict(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    single = openai_client.chat.completions.create(**chat).choices[0].message.content
    assert [c.message.content for c in openai_client.chat.completions.create(**chat, n=3).choices] == [single] * 3
    text = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    one = openai_client.completions.create(**text)
    three = openai_client.completions.create(**text, n=3)
    assert [c.text for c in three.choices] == [one.choices[0].text] * 3 and [c.index for c in three.choices] == [0, 1, 2]
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
