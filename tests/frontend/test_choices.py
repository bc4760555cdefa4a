"""n choices and cached_tokens in the HTTP layer, on a scripted backend: interleaved deltas of several choices
become indexed choices, each with its own text and finish, and usage counts the prompt once."""
from __future__ import annotations

import json

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from frontend.backend import Delta
from tests.frontend.fake_backend import ScriptedBackend
from tests.frontend.test_streams import CHAT, COMPLETION, USAGE, post, sse_events

# Two choices, interleaved as the llm stage sends them; choice 1 ends first, by length.
SCRIPT = [Delta("A", [1], None, 7, 1, index=0, cached_tokens=3), Delta("x", [2], None, 7, 1, index=1, cached_tokens=3),
          Delta("y", [3], "length", 7, 2, index=1, cached_tokens=3), Delta("B", [4], None, 7, 2, index=0, cached_tokens=3),
          Delta("C", [5], "stop", 7, 3, index=0, cached_tokens=3)]


def test_a_chat_answer_has_n_indexed_choices_and_summed_usage():
    body = post(ScriptedBackend(list(SCRIPT)), "/v1/chat/completions", {**CHAT, "n": 2}).json()
    answer = ChatCompletion.model_validate(body)
    assert [(c.index, c.message.content, c.finish_reason) for c in answer.choices] == [(0, "ABC", "stop"),
                                                                                        (1, "xy", "length")]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (7, 5, 12)
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}   # (openai < 1.40 has no type for it)


def test_a_chat_stream_carries_each_choices_index_and_finish():
    events = sse_events(post(ScriptedBackend(list(SCRIPT)), "/v1/chat/completions",
                             {**CHAT, "n": 2, "stream": True, **USAGE}))
    chunks = [ChatCompletionChunk.model_validate(json.loads(e)) for e in events[:-1]]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    assert roles == [0, 1]
    text, finish = {}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert text == {0: "ABC", 1: "xy"} and finish == {0: "stop", 1: "length"}
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 7


def test_completions_return_n_choices():
    body = post(ScriptedBackend(list(SCRIPT)), "/v1/completions", {**COMPLETION, "n": 2}).json()
    answer = Completion.model_validate(body)
    assert [(c.index, c.text, c.finish_reason) for c in answer.choices] == [(0, "ABC", "stop"), (1, "xy", "length")]
    assert answer.usage.completion_tokens == 5


def test_n_past_the_limit_and_an_empty_cache_salt_are_400s_naming_the_field():
    for extra, field in (({"n": 17}, "n"), ({"n": 0}, "n"), ({"cache_salt": ""}, "cache_salt")):
        response = post(ScriptedBackend(), "/v1/chat/completions", {**CHAT, **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == field
