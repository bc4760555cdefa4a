"""Image content keys, preprocessing's record of sent images, and the vision stage's embedding cache."""
import base64
import io
import json

import numpy as np
from PIL import Image

from nanovl.core.image_cache import EmbeddingCache, VisionRequest, encode_batch, image_key
from nanovl.core.preprocess import PreprocessSettings, Preprocessor
from nanovl.core.tiling import TilingSettings, tile_image


def png(width, height, color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def messages(*images: bytes) -> str:
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(i).decode()}}
             for i in images]
    return json.dumps([{"role": "user", "content": parts + [{"type": "text", "text": "What is it?"}]}])


class CountingEncoder:
    """A deterministic stand-in for the vision runtime that records how many tiles it encoded: tile -> rows of
    its mean pixel value and its position in the batch, so a cached table is told apart from a recomputed one."""

    def __init__(self, tokens_per_tile=4, hidden=3):
        self.tokens_per_tile, self.hidden, self.tiles = tokens_per_tile, hidden, 0

    def __call__(self, tiles):
        self.tiles += len(tiles)
        means = tiles.reshape(len(tiles), -1).mean(axis=1).astype(np.float32)
        return np.repeat(means[:, None, None], self.tokens_per_tile, 1).repeat(self.hidden, 2)


def test_keys_cover_content_and_tiling_not_the_url():
    a, b = png(64, 64, (1, 2, 3)), png(64, 64, (3, 2, 1))
    tiling = TilingSettings()
    assert image_key(a, tiling, b"m") == image_key(bytes(a), tiling, b"m")
    assert len({image_key(a, tiling, b"m"), image_key(b, tiling, b"m"), image_key(a, TilingSettings(max_tiles=6), b"m"),
                image_key(a, tiling, b"other checkpoint")}) == 4


def test_an_image_sent_before_goes_as_its_bytes_with_the_same_ids(config, tokenizer):
    pre = Preprocessor(config, tokenizer)
    image = png(900, 600, (10, 200, 30))
    first, second = pre(messages(image)), pre(messages(image))
    assert len(first.tiles) == first.tile_counts[0] > 1 and first.sources == (b"",)
    assert len(second.tiles) == 0 and second.sources == (image,)
    assert np.array_equal(first.input_ids, second.input_ids) and np.array_equal(first.extra_ids, second.extra_ids)
    image_positions = first.input_ids >= config.vocab_size
    assert set(first.extra_ids[image_positions]) == {first.image_keys[0]} and not first.extra_ids[~image_positions].any()
    other = pre(messages(png(900, 600, (10, 200, 31))))
    assert np.array_equal(other.input_ids, first.input_ids) and other.image_keys != first.image_keys
    off = Preprocessor(config, tokenizer, PreprocessSettings(image_cache_entries=0))
    off(messages(image))
    assert len(off(messages(image)).tiles) == first.tile_counts[0]


def test_a_cached_image_costs_no_forward_and_gets_the_same_rows():
    encoder, cache = CountingEncoder(), EmbeddingCache(1 << 20)
    tiling = TilingSettings(tile_size=32, max_tiles=4)
    data = png(64, 32, (50, 60, 70))
    tiles = tile_image(Image.open(io.BytesIO(data)).convert("RGB"), tiling)
    sent = VisionRequest(tiles, [7], [len(tiles)], [b""], tiling)
    (first,) = encode_batch(encoder, [sent], cache, 3, 4)
    forwarded = encoder.tiles
    as_bytes = VisionRequest(tiles[:0], [7], [len(tiles)], [data], tiling)
    (second,) = encode_batch(encoder, [as_bytes], cache, 3, 4)
    assert encoder.tiles == forwarded and np.array_equal(first, second) and cache.hits == 1
    (missed,) = encode_batch(encoder, [as_bytes], EmbeddingCache(1 << 20), 3, 4)   # evicted: decoded there
    assert np.array_equal(missed, first) and encoder.tiles == 2 * forwarded


def test_two_images_never_share_an_embedding_and_a_batch_mixes_hits_and_misses():
    encoder, cache = CountingEncoder(), EmbeddingCache(1 << 20)
    red, blue = np.full((1, 8, 8, 3), 200, np.uint8), np.full((2, 8, 8, 3), 20, np.uint8)
    encode_batch(encoder, [VisionRequest(red, [1], [1], [b""])], cache, 3, 4)
    tables = encode_batch(encoder, [VisionRequest(np.concatenate([red, blue]), [1, 2], [1, 2], [b"", b""]),
                                    VisionRequest(blue, None)], cache, 3, 4)
    assert encoder.tiles == 1 + 2 + 2
    assert tables[0].shape == (12, 3) and (tables[0][:4] == 200).all() and (tables[0][4:] == 20).all()
    assert (tables[1] == 20).all() and len(cache) == 2


def test_memory_stays_within_the_bound_under_many_distinct_images():
    rows = np.ones((4, 3), np.float32)
    cache = EmbeddingCache(10 * rows.nbytes)
    for key in range(1, 1000):
        cache.put(key, rows * key)
        assert cache.bytes <= 10 * rows.nbytes
    assert len(cache) == 10 and cache.get(999) is not None and cache.get(1) is None
    cache.put(5000, np.ones((100, 3), np.float32))   # larger than the whole cache: not kept
    assert cache.get(5000) is None and cache.bytes <= 10 * rows.nbytes


def test_instances_share_their_record_through_a_directory_kept_within_its_bound(tmp_path):
    from nanovl.core.image_cache import SeenImages

    one, two = SeenImages(100, tmp_path), SeenImages(100, tmp_path)
    one.add(12345, 13)
    assert two.get(12345) == 13 and two.get(999) is None
    for key in range(1, 400):
        one.add(key, key % 13 + 1)
    assert len([p for p in tmp_path.iterdir()]) <= 100 + 63   # pruned every 64 writes
    assert two.get(399) == 399 % 13 + 1 and SeenImages(0, tmp_path).get(399) is None
