import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from nanovl.core.tiling import TilingSettings, candidate_grids, choose_grid, num_tiles, tile_image


def reference_tiles(image: Image.Image, cols: int, rows: int, size: int = 512) -> list[np.ndarray]:
    """Straightforward reference: resize the whole image, crop each tile, then the thumbnail."""
    resized = image.resize((cols * size, rows * size), Image.Resampling.BICUBIC)
    tiles = []
    for i in range(cols * rows):
        box = ((i % cols) * size, (i // cols) * size, (i % cols + 1) * size, (i // cols + 1) * size)
        tiles.append(np.asarray(resized.crop(box)))
    if len(tiles) > 1:
        tiles.append(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)))
    return tiles


# MODEL-FACTS 3.4, computed there with the reference algorithm (no 2x up-scale).
@pytest.mark.parametrize("size, grid, tiles", [
    ((256, 256), (1, 1), 1), ((512, 512), (1, 1), 1), ((640, 480), (4, 3), 13), ((1024, 1024), (2, 2), 5),
    ((1280, 720), (4, 2), 9), ((1920, 1080), (4, 2), 9), ((1700, 2200), (3, 4), 13), ((1024, 256), (4, 1), 5),
    ((3072, 1024), (6, 2), 13),
])
def test_grid_matches_the_reference_table(size, grid, tiles):
    assert choose_grid(*size) == grid
    assert num_tiles(*size) == tiles


def test_candidates_are_the_35_grids_up_to_12_tiles():
    grids = candidate_grids(12)
    assert len(grids) == 35 and all(c * r <= 12 for c, r in grids)
    assert [c * r for c, r in grids] == sorted(c * r for c, r in grids)


def _image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(1, 1), (256, 256), (512, 512), (640, 480), (1280, 720), (1024, 256), (4000, 10)])
def test_tiles_equal_the_per_tile_reference(size):
    image = _image(*size)
    ours = tile_image(image)
    ref = reference_tiles(image, *choose_grid(*size))
    assert ours.dtype == np.uint8 and ours.shape == (len(ref), 512, 512, 3)
    for got, want in zip(ours, ref):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 1500), st.integers(1, 1500))
def test_random_sizes_match_the_reference(width, height):
    image = _image(width, height, seed=width * 7 + height)
    ours = tile_image(image, TilingSettings())
    ref = reference_tiles(image, *choose_grid(width, height))
    assert len(ours) == len(ref) == num_tiles(width, height)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[-1], ref[-1])
