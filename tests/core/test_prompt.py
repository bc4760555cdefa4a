import numpy as np
import pytest

from nanovl.core.errors import ClientError
from nanovl.core.prompt import build_input_ids, parse_messages


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
