from hypothesis import given, settings, strategies as st

from nanovl.core.detokenize import full_text
from nanovl.core.stop import StopMatcher


def run(matcher, ids, chunk=1):
    released, trimmed = [], 0
    for i in range(0, len(ids), chunk):
        out = matcher.feed(ids[i:i + chunk], final=i + chunk >= len(ids))
        released += out.tokens
        if out.stopped:
            return released, out.trim_bytes, True
    return released, trimmed, False


def test_stop_string_spanning_tokens_is_cut_exactly(tokenizer, token_bytes):
    ids = tokenizer("The quick brown fox jumps over", add_special_tokens=False).input_ids
    released, trim, stopped = run(StopMatcher.create(token_bytes, ["own fo"]), ids)
    text = full_text(token_bytes, released)
    assert stopped and text[:len(text) - trim] == "The quick br"


def test_text_that_may_start_a_stop_waits(tokenizer, token_bytes):
    matcher = StopMatcher.create(token_bytes, ["END!"])
    # Llama 3 splits '\n' from a following word, so 'EN' is a token of its own ('abc EN' would make ' EN' one).
    ids = tokenizer("abc\nEN", add_special_tokens=False).input_ids
    out = matcher.feed(ids)
    assert full_text(token_bytes, out.tokens) == "abc\n"   # 'EN' could begin 'END!'... wait for more
    out = matcher.feed(tokenizer("D?", add_special_tokens=False).input_ids, final=True)
    assert not out.stopped and full_text(token_bytes, out.tokens).endswith("END?")


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<"), max_size=40),
       stop=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<"), min_size=1, max_size=4),
       chunk=st.integers(1, 5))
def test_output_is_the_text_before_the_first_stop(tokenizer, token_bytes, text, stop, chunk):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    released, trim, stopped = run(StopMatcher.create(token_bytes, [stop]), ids, chunk)
    data = token_bytes.join(released)
    data = data[:len(data) - trim]
    if stop in text:
        assert stopped and data.decode() == text[:text.index(stop)]
    else:
        assert not stopped and data.decode() == text
