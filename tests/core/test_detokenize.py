import random

from hypothesis import given, settings, strategies as st

from nanovl.core.detokenize import StreamFramer, full_text, text_delta


def stream_text(token_bytes, ids, cuts):
    framer, out, start = StreamFramer(token_bytes), [], 0
    bounds = sorted(set(c for c in cuts if 0 < c < len(ids))) + [len(ids)]
    for end in bounds:
        framed, offset = framer.frame(ids[start:end])
        out.append(text_delta(token_bytes, framed, offset, final=end == len(ids)))
        start = end
    return "".join(out)


def test_byte_table_decodes_like_the_tokenizer(tokenizer, token_bytes, config):
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(config.vocab_size) for _ in range(rng.randint(0, 40))]
        assert full_text(token_bytes, ids) == tokenizer.decode(ids, skip_special_tokens=True)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_streamed_deltas_concatenate_to_the_full_decode(tokenizer, token_bytes, config, data):
    ids = data.draw(st.lists(st.integers(0, config.vocab_size - 1), max_size=40))
    cuts = data.draw(st.lists(st.integers(0, 40), max_size=20))
    assert stream_text(token_bytes, ids, cuts) == tokenizer.decode(ids, skip_special_tokens=True)


@settings(max_examples=200, deadline=None)
# '<' excluded: every added (special) token starts with it, and specials are skipped by design.
@given(text=st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=30), cuts=st.lists(st.integers(0, 60), max_size=30))
def test_any_text_survives_token_by_token_streaming(tokenizer, token_bytes, text, cuts):
    """Emoji, CJK, combining marks, byte-fallback pieces, leading spaces: encoded, then streamed back."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert stream_text(token_bytes, ids, cuts) == text
    assert stream_text(token_bytes, ids, list(range(len(ids)))) == text


def test_specials_between_split_bytes_keep_the_character(tokenizer, token_bytes):
    emoji = tokenizer("🚀", add_special_tokens=False).input_ids
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert len(emoji) > 1   # Llama 3 writes it as 3 byte-level tokens
    ids = emoji[:1] + [eot] * 5 + emoji[1:]
    assert stream_text(token_bytes, ids, list(range(len(ids)))) == tokenizer.decode(ids, skip_special_tokens=True)
