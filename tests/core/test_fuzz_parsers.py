"""Property tests of every parser a client's bytes reach in preprocessing: data URLs and base64, `<img>` tags and
content parts, image decoding (random bytes, cut or damaged real files, every mode) and tiling. Whatever comes
in, the answer is a result or a ClientError; any other exception is a bug (a 500 for the client)."""
import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st
from PIL import Image

from nanovl.core.errors import ClientError
from nanovl.core.fetch import FetchSettings, fetch_image
from nanovl.core.images import ImageLimits, data_url_bytes, decode_image, load_rgb, open_image
from nanovl.core.preprocess import PreprocessSettings, Preprocessor
from nanovl.core.prompt import _IMAGE_SENTINEL, parse_messages
from nanovl.core.tiling import TilingSettings, num_tiles, tile_image

# Bounded: each property test runs in a few seconds on 2 cores, within `make test`.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Small enough that a header claiming a huge image is refused before decoding, and decoding stays fast.
LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=2_000_000)
TILING = TilingSettings(max_tiles=6)

# JSON values as a client can send them (lone surrogates included: "\ud800" is valid JSON).
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
# Text rich in what the parsers look for.
fragments = st.sampled_from(["<img", "<IMG ", " src=", "src = ", '"', "'", '\\"', ">", "/>", "<image>", "&quot;",
                             "&amp;", "data:image/png;base64,", "iVBORw0K", "https://x/a.png", "\n", "\ue000",
                             "nanovl-image", _IMAGE_SENTINEL[1:], "\ud800", "é", " "])
tagged_text = st.lists(fragments | st.text(max_size=5), max_size=12).map("".join)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# Real files of every accepted format, to cut and damage.
SAMPLES = {fmt: encode(_noise(37, 23, i), fmt) for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "GIF", "BMP"])}
SAMPLES["PNG-RGBA"] = encode(_noise(20, 30, 9).convert("RGBA"), "PNG")
SAMPLES["JPEG-progressive"] = encode(_noise(40, 40, 7), "JPEG", progressive=True)


def assert_rgb_or_client_error(data: bytes):
    try:
        image = decode_image(data, index=0, limits=LIMITS)
    except ClientError as exc:
        assert exc.message.startswith("image 0: ") and exc.code
        return None
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    return image


# ---- data URLs and base64 ---------------------------------------------------------------------------------

@FAST
@given(st.text(max_size=80) | st.builds("data:{}{},{}".format, st.text(max_size=15), st.text(max_size=15),
                                         st.text(max_size=40)))
@example("data:,")
@example("data:image/png;base64")
@example("data:image/png;base64,=")
@example("data:image/png;base64,\ud800")
def test_any_data_url_is_bytes_or_a_client_error(url):
    try:
        data = data_url_bytes(url, index=0, limits=LIMITS)
    except ClientError as exc:
        assert exc.code in ("invalid_image_url", "invalid_base64", "image_too_large")
        return
    assert isinstance(data, bytes)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["image/png", "image/jpeg", "", "application/x"]),
       st.sampled_from(["", ";charset=utf-8"]), st.sampled_from(["", "\n", "  "]))
def test_valid_base64_data_urls_give_back_their_bytes(data, mime, params, padding):
    url = f"data:{mime}{params};base64,{padding}{base64.b64encode(data).decode()}{padding}"
    assert data_url_bytes(url, index=3, limits=LIMITS) == data


@FAST
@given(st.sampled_from(["http://127.0.0.1:1", "https://127.0.0.1:1", "http://[::1", "http://", "ftp://x", ""]),
       st.text(max_size=30))
@example("http://127.0.0.1:1", "/a\ud800.png")
@example("http://[::1", "/x")
def test_any_image_url_is_fetched_or_a_client_error(prefix, rest):
    # Port 1 on loopback refuses at once: every path through the fetcher, no network beyond this machine.
    settings = FetchSettings(allow_private=True, total_timeout_s=2, connect_timeout_s=1)

    async def fetch():
        async with httpx.AsyncClient(trust_env=False) as client:
            return await fetch_image(client, prefix + rest, index=0, settings=settings)
    with pytest.raises(ClientError):
        asyncio.run(fetch())


# ---- messages, content parts and <img> tags ---------------------------------------------------------------

def _check_chat(messages):
    try:
        chat = parse_messages(messages)
    except ClientError as exc:
        assert exc.param == "messages" and exc.message
        return None
    assert len(chat.messages) == len(messages)
    assert all(isinstance(url, str) for url in chat.image_urls)
    assert all(isinstance(m["content"], str) for m in chat.messages)
    return chat


@FAST
@given(json_values)
def test_any_json_as_messages_parses_or_is_a_client_error(messages):
    _check_chat(messages)


parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": tagged_text | json_values}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": tagged_text | json_values}) | json_values}),
    st.dictionaries(st.sampled_from(["type", "text", "image_url"]), json_values, max_size=3),
    json_values)
messages_strategy = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | json_values,
     "content": tagged_text | st.lists(parts, max_size=4) | json_values}), min_size=1, max_size=4)


@FAST
@given(messages_strategy)
def test_chat_shaped_messages_parse_or_are_client_errors(messages):
    chat = _check_chat(messages)
    if chat is not None:   # each image is one sentinel, unless the text itself spelled the sentinel's pieces
        total = sum(m["content"].count(_IMAGE_SENTINEL) for m in chat.messages)
        assert total >= len(chat.image_urls) or any(
            "\ue000" in json.dumps(m, ensure_ascii=False) for m in messages)


# ---- image decoding and tiling ----------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=2000))
def test_random_bytes_decode_or_are_client_errors(data):
    assert_rgb_or_client_error(data)


@FAST
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_cut_and_damaged_real_files_decode_or_are_client_errors(name, draw):
    data = bytearray(SAMPLES[name])
    for _ in range(draw.draw(st.integers(0, 6), label="flips")):
        position = draw.draw(st.integers(0, len(data) - 1), label="position")
        data[position] = draw.draw(st.integers(0, 255), label="byte")
    cut = draw.draw(st.integers(0, len(data)), label="cut")
    assert_rgb_or_client_error(bytes(data[:cut]))


MODES = {  # mode -> formats Pillow writes it in
    "1": ["PNG", "BMP", "GIF"], "L": ["PNG", "JPEG", "BMP", "GIF", "WEBP"], "LA": ["PNG", "WEBP"],
    "P": ["PNG", "BMP", "GIF"], "RGB": ["PNG", "JPEG", "BMP", "WEBP", "GIF"], "RGBA": ["PNG", "WEBP", "GIF"],
    "CMYK": ["JPEG"], "I;16": ["PNG"],
}


@settings(FAST, max_examples=80)
@given(st.sampled_from(sorted(MODES)), st.data(), st.integers(1, 600), st.integers(1, 600), st.integers(0, 2 ** 16))
def test_images_of_any_mode_and_size_tile_as_counted(mode, draw, width, height, seed):
    fmt = draw.draw(st.sampled_from(MODES[mode]), label="format")
    image = _noise(width, height, seed).convert(mode)
    if mode == "P" and draw.draw(st.booleans(), label="transparent index"):
        image.info["transparency"] = 0
    decoded = assert_rgb_or_client_error(encode(image, fmt))
    assert decoded is not None and decoded.size == (width, height)
    tiles = tile_image(decoded, TILING)
    assert tiles.shape == (num_tiles(width, height, TILING), TILING.tile_size, TILING.tile_size, 3)
    assert tiles.dtype == np.uint8


def test_a_header_claiming_a_huge_image_is_refused_before_decoding():
    png = bytearray(SAMPLES["PNG"])
    png[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")   # IHDR width, height (CRC now wrong)
    with pytest.raises(ClientError) as refused:
        load_rgb(open_image(bytes(png), index=0, limits=LIMITS))
    assert refused.value.code in ("image_too_many_pixels", "invalid_image")


# ---- the whole preprocessing stage: messages JSON in, prompt ids and tiles out ----------------------------

@pytest.fixture(scope="module")
def preprocessor(config, tokenizer):
    # An allow-list no host is on: remote URLs are refused before any DNS lookup or connection.
    settings = PreprocessSettings(max_tiles=TILING.max_tiles, max_image_bytes=LIMITS.max_bytes,
                                  max_image_pixels=LIMITS.max_pixels, image_url_domains=("invalid.",))
    pre = Preprocessor(config, tokenizer, settings)
    yield pre
    pre.close()


# Flat colours: small files, so that a data URL left as text (in a system message) stays cheap to tokenize.
small_images = st.builds(lambda w, h, fmt: "data:image/x;base64," + base64.b64encode(
    encode(Image.new("RGB", (w, h), (w % 256, h % 256, 9)), fmt)).decode(), st.integers(1, 1200),
    st.integers(1, 1200), st.sampled_from(["PNG", "JPEG"]))
urls = small_images | st.sampled_from(["data:image/png;base64,!!", "http://", "https://img.example/a.png",
                                       "ftp://x", "file:///etc/passwd", "", "data:,", "javascript:1"])
image_part = st.builds(lambda url: {"type": "image_url", "image_url": {"url": url}}, urls)
text_part = st.builds(lambda text: {"type": "text", "text": text}, tagged_text)
stage_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]),
    "content": tagged_text | st.lists(image_part | text_part, max_size=3) | st.builds(
        '<img src="{}"> {}'.format, urls, tagged_text)}), min_size=1, max_size=3)
# Mostly servable: a user turn with real images of random sizes, as parts or tags, and some text.
good_chats = st.builds(lambda images, text, as_tags: [{"role": "user", "content": (
    " ".join(f'<img src="{url}">' for url in images) + text if as_tags else
    [{"type": "image_url", "image_url": {"url": url}} for url in images] + [{"type": "text", "text": text}])}],
    st.lists(small_images, min_size=1, max_size=3), st.text(max_size=30), st.booleans())


@FAST
@given(good_chats | stage_messages | json_values, st.booleans())
@example([{"role": "user", "content": "\ud800"}], False)   # found by this test: a TypeError in the tokenizer
def test_the_stage_gives_ids_and_tiles_or_a_client_error(preprocessor, messages, as_bytes):
    raw = json.dumps(messages)
    try:
        out = preprocessor(raw.encode() if as_bytes else raw)
    except ClientError as exc:
        assert exc.message and exc.status == 400
        event(f"refused: {exc.code or 'bad messages'}")
        return
    event(f"served, {len(out.tiles)} tiles")
    ids = out.input_ids
    assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) < preprocessor.config.max_context
    image_rows = int((ids >= preprocessor.config.vocab_size).sum())
    assert image_rows == sum(out.tile_counts) * preprocessor.config.tokens_per_tile
    # An image sent before goes as its bytes, without tiles (nanovl.core.image_cache).
    assert len(out.tiles) == sum(n for n, source in zip(out.tile_counts, out.sources) if not source)
    assert len(out.image_keys) == len(out.sources) == len(out.tile_counts)


@FAST
@given(st.binary(max_size=200))
def test_the_stage_refuses_bytes_that_are_not_json_messages(preprocessor, raw):
    try:
        preprocessor(raw)
    except ClientError:
        return
