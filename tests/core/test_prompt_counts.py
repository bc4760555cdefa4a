"""Prompt ids checked against an independent tokenization: Meta's own tiktoken Encoding of the same
tokenizer.model (llama_models), on the text between special tokens of a prompt rendered here by hand from NIM's
rules; each special token is its real Llama-3.1 id, each image span `<img>` + its rows + `</img>`. This checks
the template, the parts joining, the tokenizer.json conversion and the image splicing at once.

Left out of the GPU container's run by the Makefile's MAIN_ONLY_TESTS (no tiktoken or llama-models there): the
counts themselves are also checked by test_prompt.py, which needs only the checkpoint's tokenizer."""
import re

import pytest
from hypothesis import assume, given, settings, strategies as st

from nanovl.core.prompt import build_input_ids, parse_messages

# Real ids, written out rather than read from our tokenizer (MODEL-FACTS 1.4).
SPECIAL_IDS = {"<|begin_of_text|>": 128000, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
               "<|eot_id|>": 128009, "<img>": 128257, "</img>": 128258}
_PIECES = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_IDS) + r"|\x00\d+\x00)")


@pytest.fixture(scope="module")
def meta_encoding():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance().model   # a tiktoken.Encoding over llama3/tokenizer.model


def image(tiles: int) -> str:
    """Stands for an image in the hand-rendered prompt (NUL-delimited: no chat text has it)."""
    return f"\x00{tiles}\x00"


def nim_prompt(turns: list[tuple[str, list[str]]]) -> str:
    """NIM's rendering, by hand: turns are (role, parts), a part a text or an image(); parts join with '\\n'."""
    def content(parts):
        return "\n".join(f"<img>{p}</img>" if p.startswith("\x00") else p for p in parts).strip()
    system = "detailed thinking off"
    if turns and turns[0][0] == "system":
        system, turns = system + "\n\n" + content(turns[0][1]), turns[1:]
    text = f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    for role, parts in turns:
        if role != "system":   # a later system message is dropped
            text += f"<|start_header_id|>{role}<|end_header_id|>\n\n{content(parts)}<|eot_id|>"
    return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def expected_ids(encoding, prompt: str, vocab_size: int, tokens_per_tile: int) -> list[int]:
    ids, row = [], vocab_size
    for piece in _PIECES.split(prompt):
        if piece in SPECIAL_IDS:
            ids.append(SPECIAL_IDS[piece])
        elif piece.startswith("\x00"):
            rows = int(piece.strip("\x00")) * tokens_per_tile
            ids += range(row, row + rows)
            row += rows
        elif piece:
            ids += encoding.encode_ordinary(piece)
    return ids


def as_messages(turns) -> tuple[list[dict], list[int]]:
    """-> OpenAI messages (images as image_url parts) and the tiles of each image in order."""
    messages, tiles = [], []
    for role, parts in turns:
        content = []
        for part in parts:
            if part.startswith("\x00"):
                tiles.append(int(part.strip("\x00")))
                content.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{len(tiles)}"}})
            else:
                content.append({"type": "text", "text": part})
        messages.append({"role": role, "content": content})
    return messages, tiles


CONVERSATIONS = {
    "nim example": [("user", [image(13), 'How many times more "FP16Tensor Core" does H100 SXM have than H100 NVL?'])],
    "text only, no system": [("user", ["Hello there"])],
    "system first": [("system", ["  You read charts.  "]), ("user", ["What does the chart show?\n"])],
    "multi-turn with images": [
        ("system", ["Answer in French."]), ("user", [image(1), "Décris l'image.", image(5)]),
        ("assistant", [" Un chat 🐈 sur une chaise. "]), ("user", ["东京 and 🚀? ", image(13)])],
    "text before the image": [("user", ["Compare:", image(9)]), ("assistant", ["They differ."]),
                              ("user", ["Why?"])],
    "a later system message": [("user", ["a"]), ("system", ["not rendered"]), ("user", ["b"])],
    "whitespace and digits": [("user", ["\n\n  12345678 tabs\t\tand  spaces   \n"])],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_ids_equal_metas_tokenization(name, config, tokenizer, meta_encoding):
    turns = CONVERSATIONS[name]
    messages, tiles = as_messages(turns)
    ids = build_input_ids(tokenizer, config, parse_messages(messages), tiles)
    assert ids.tolist() == expected_ids(meta_encoding, nim_prompt(turns), config.vocab_size, config.tokens_per_tile)
    if name == "nim example":
        assert len(ids) == 3372


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ue000"), max_size=40)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                          st.lists(text | st.integers(1, 13).map(image), min_size=1, max_size=3)),
                min_size=1, max_size=4))
def test_any_conversation_equals_metas_tokenization(config, tokenizer, meta_encoding, turns):
    # Images only where the API takes them (user turns); no text that names a special token or places images.
    turns = [(role, [p for p in parts if role == "user" or not p.startswith("\x00")] or [""]) for role, parts in turns]
    specials = tokenizer.all_special_tokens + ["<image>", "<img", "</img>", "<|"]
    assume(not any(s in p for _, parts in turns for p in parts for s in specials))
    messages, tiles = as_messages(turns)
    ids = build_input_ids(tokenizer, config, parse_messages(messages), tiles)
    assert ids.tolist() == expected_ids(meta_encoding, nim_prompt(turns), config.vocab_size, config.tokens_per_tile)
