"""Dynamic tiling of an image into 512x512 tiles, exactly as the model was trained.

The area-weighted InternVL variant of the HF image processor, vLLM and Megatron (MODEL-FACTS 3.1): pick the
grid whose aspect ratio best matches the image, weighted by how much of the image's area the grid covers
(capped at 0.6), first candidate wins ties; resize the whole image to the grid, cut it row-major, and append
a thumbnail of the whole image when there is more than one tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

# Pillow's default resize filter, which vLLM and Megatron rely on.
RESAMPLE = Image.Resampling.BICUBIC
AREA_CAP = 0.6


@dataclass(frozen=True)
class TilingSettings:
    tile_size: int = 512
    max_tiles: int = 12
    use_thumbnail: bool = True


@lru_cache(maxsize=16)
def candidate_grids(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(cols, rows) grids with 1..max_tiles tiles, in the reference's order: a set sorted by area.

    The order among equal areas is Python's set iteration order, which decides ties; build it the same way.
    """
    grids = {(i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if 1 <= i * j <= max_tiles}
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, settings: TilingSettings = TilingSettings()) -> tuple[int, int]:
    aspect = width / height
    area = width * height
    best, best_grid = float("-inf"), (1, 1)
    for cols, rows in candidate_grids(settings.max_tiles):
        ratio = cols / rows
        coverage = min(cols * rows * settings.tile_size ** 2 / area, AREA_CAP)
        score = coverage * min(ratio / aspect, aspect / ratio)
        if score > best:   # strict: the first of equal scores wins, as in the reference
            best, best_grid = score, (cols, rows)
    return best_grid


def num_tiles(width: int, height: int, settings: TilingSettings = TilingSettings()) -> int:
    cols, rows = choose_grid(width, height, settings)
    tiles = cols * rows
    return tiles + 1 if settings.use_thumbnail and tiles > 1 else tiles


def tile_image(image: Image.Image, settings: TilingSettings = TilingSettings()) -> np.ndarray:
    """RGB image -> tiles: uint8 [n, S, S, 3], row-major, thumbnail last when n > 1."""
    size = settings.tile_size
    cols, rows = choose_grid(image.width, image.height, settings)
    grid = np.asarray(image.resize((cols * size, rows * size), RESAMPLE))
    # One resize and a reshape instead of a crop per tile: the same pixels, no per-tile copies in PIL.
    tiles = grid.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4).reshape(-1, size, size, 3)
    if settings.use_thumbnail and len(tiles) > 1:
        thumbnail = np.asarray(image.resize((size, size), RESAMPLE))[None]
        tiles = np.concatenate([tiles, thumbnail])
    return np.ascontiguousarray(tiles)
