import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from nanovl.core.errors import ClientError, ServerError
from nanovl.core.preprocess import PreprocessSettings, Preprocessor
from nanovl.core.prompt import build_input_ids, parse_messages, render

# NIM's documented example (docs.nvidia.com/nim/vision-language-models/1.3.0/examples/llama-nemotron-nano/api.html):
# one image of 13 tiles and Q1 count 3372 prompt tokens; the follow-up (that turn, the answer, Q2) 3517.
Q1 = 'How many times more "FP16Tensor Core" does H100 SXM have than H100 NVL?'
Q2 = "Please extract the table in the image as HTML"
# The page's answer could not be read; NIM's usage gives it 126 tokens (completion_tokens). This stand-in has 126.
ANSWER = ("According to the table in the image, the H100 SXM delivers 1,979 teraFLOPS of FP16 Tensor Core "
          "performance, while the H100 NVL delivers 1,671 teraFLOPS. Dividing the first figure by the second gives "
          "1,979 / 1,671 = 1.18, so the H100 SXM has about 1.18 times the FP16 Tensor Core performance of the "
          "H100 NVL, roughly 18 percent more. Both figures are quoted with sparsity, as the asterisk in the table "
          "notes; the ratio holds without it.")
HEAD = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"


def test_image_part_becomes_an_embedding_span(config, tokenizer):
    chat = parse_messages([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "What is this?"}]}])
    assert chat.image_urls == ["data:x"]
    ids = build_input_ids(tokenizer, config, chat, [3])
    start, end = tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
    span = 3 * config.tokens_per_tile
    i = list(ids).index(start)
    assert ids[i + span + 1] == end
    np.testing.assert_array_equal(ids[i + 1:i + 1 + span], np.arange(config.vocab_size, config.vocab_size + span))
    # The text around the span is what the chat template renders for '<image>\nWhat is this?'.
    text_ids = [t for t in ids if t < config.vocab_size]
    expected = tokenizer.apply_chat_template([{"role": "user", "content": "<img></img>\nWhat is this?"}],
                                             tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(text_ids) == expected


def test_rows_run_on_across_images(config, tokenizer):
    chat = parse_messages([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "a"}}, {"type": "image_url", "image_url": {"url": "b"}}]}])
    ids = build_input_ids(tokenizer, config, chat, [1, 5])
    rows = ids[ids >= config.vocab_size] - config.vocab_size
    np.testing.assert_array_equal(rows, np.arange(6 * config.tokens_per_tile))


def test_text_only_prompt_equals_the_chat_template(config, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]
    ids = build_input_ids(tokenizer, config, parse_messages(messages), [])
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids.tolist() == tokenizer(rendered, add_special_tokens=False).input_ids


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"), ("hi", "non-empty"), ([{"role": "tool", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "content"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content part"),
    ([{"role": "user", "content": "\ue000nanovl-image\ue000"}], "reserved"),
])
def test_bad_messages_are_client_errors(messages, match):
    with pytest.raises(ClientError, match=match):
        parse_messages(messages)


def test_nim_img_tags_in_plain_text_become_images_in_place():
    chat = parse_messages([{"role": "user", "content": 'Compare <img src="data:a" /> with <img src=\'https://x/b.png\'>'},
                           {"role": "assistant", "content": "ok"},
                           {"role": "user", "content": 'and <img src=\\"data:c\\"/> too'}])
    assert chat.image_urls == ["data:a", "https://x/b.png", "data:c"]
    texts = [m["content"] for m in chat.messages]
    assert texts[0].startswith("Compare ") and texts[0].count("\ue000nanovl-image\ue000") == 2
    assert texts[2] == "and \ue000nanovl-image\ue000 too"


def test_image_parts_keep_their_order_before_or_after_text():
    parts = [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {"url": "u1"}},
             {"type": "image_url", "image_url": {"url": "u2"}}]
    chat = parse_messages([{"role": "user", "content": parts}])
    assert chat.image_urls == ["u1", "u2"]
    assert chat.messages[0]["content"] == "first\n\ue000nanovl-image\ue000\n\ue000nanovl-image\ue000"


def test_image_placeholders_in_text_place_the_images():
    parts = [{"type": "image_url", "image_url": {"url": "u1"}}, {"type": "text", "text": "Look: <image> here"}]
    assert parse_messages([{"role": "user", "content": parts}]).messages[0]["content"] == \
        "Look: \ue000nanovl-image\ue000 here"
    with pytest.raises(ClientError, match="2 <image> placeholders for 1 images"):
        parse_messages([{"role": "user", "content": parts[:1] + [{"type": "text", "text": "<image><image>"}]}])


def _image_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def nim_turn():
    """NIM's first request: the image first, then the question. 2048x1536 is a 4x3 grid + thumbnail: 13 tiles."""
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_url(2048, 1536)}},
                                        {"type": "text", "text": Q1}]}


def test_nims_documented_requests_count_3372_and_3517(config, tokenizer, nim_turn):
    assert config.tokens_per_tile == 256
    preprocess = Preprocessor(config, tokenizer)
    first = preprocess(json.dumps([nim_turn]))
    assert len(first.tiles) == 13 and len(first.input_ids) == 3372
    assert len(tokenizer(ANSWER, add_special_tokens=False).input_ids) == 126
    follow_up = [nim_turn, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": Q2}]
    assert len(preprocess(json.dumps(follow_up)).input_ids) == 3517


def test_the_checkpoints_own_template_is_a_stage_parameter(config, tokenizer, nim_turn, monkeypatch):
    # The Llama-3.1 format without a forced system turn (Megatron's llama3p1): NIM's counts less its 9 tokens.
    monkeypatch.setattr(tokenizer, "chat_template", (
        "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"))
    own = Preprocessor(config, tokenizer, PreprocessSettings(chat_template="checkpoint"))
    assert len(own(json.dumps([nim_turn])).input_ids) == 3372 - 9
    assert len(Preprocessor(config, tokenizer)(json.dumps([nim_turn])).input_ids) == 3372
    with pytest.raises(ServerError, match="chat_template: 'vllm' is not one of nim, checkpoint"):
        Preprocessor(config, tokenizer, PreprocessSettings(chat_template="vllm"))
    monkeypatch.setattr(tokenizer, "chat_template", None)
    with pytest.raises(ServerError, match="has no chat_template"):
        Preprocessor(config, tokenizer, PreprocessSettings(chat_template="checkpoint"))


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": " Hi "}],
     "detailed thinking off<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
    ([{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "Hi"}],
     "detailed thinking off\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
    # A system message anywhere but first is dropped, as NIM's template drops it.
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\nHello! "},
      {"role": "system", "content": "dropped"}, {"role": "user", "content": "Again"}],
     "detailed thinking off<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
     "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|>"),
])
def test_nim_template_rules(tokenizer, messages, expected):
    text = render(tokenizer, parse_messages(messages))
    assert text == HEAD + expected + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_tools_end_the_system_turn(tokenizer):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}, {"name": "g"}]
    text = render(tokenizer, parse_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]),
                  tools=tools)
    assert text.startswith(HEAD + 'detailed thinking off\n\nS\n\n<AVAILABLE_TOOLS>[{"name": "f", "parameters": '
                           '{"type": "object"}}, {"name": "g"}]</AVAILABLE_TOOLS><|eot_id|><|start_header_id|>user')
