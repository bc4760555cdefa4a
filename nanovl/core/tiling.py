"""Dynamic tiling of an image into 512x512 tiles, exactly as the model was trained.

The area-weighted InternVL variant of the HF image processor, vLLM and Megatron (MODEL-FACTS 3.1): pick the
grid whose aspect ratio best matches the image, weighted by how much of the image's area the grid covers
(capped at 0.6), first candidate wins ties; resize the whole image to the grid, cut it row-major, and append
a thumbnail of the whole image when there is more than one tile.

The HF image processor (not vLLM, not Megatron's training code) first up-scales every image 2x with bilinear
resampling; that changes the grid of small and medium images (512x512: 1 tile -> 5). It is an option,
`upscale_2x`, off by default: the model was trained on Megatron's pipeline, and vLLM serves it without.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

# Pillow's default resize filter, which vLLM and Megatron rely on.
RESAMPLE = Image.Resampling.BICUBIC
UPSCALE_RESAMPLE = Image.Resampling.BILINEAR   # the HF processor's image.resize((w * 2, h * 2), BILINEAR)
AREA_CAP = 0.6


@dataclass(frozen=True)
class TilingSettings:
    tile_size: int = 512
    max_tiles: int = 12
    use_thumbnail: bool = True
    upscale_2x: bool = False   # the HF processor's quirk; see the module docstring


def tiled_size(width: int, height: int, settings: TilingSettings = TilingSettings()) -> tuple[int, int]:
    """The size the grid is chosen for: the image's own, or twice it with the HF up-scale."""
    return (2 * width, 2 * height) if settings.upscale_2x else (width, height)


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
    """Tiles of a width x height image (the image's own size: the up-scale, if on, is applied here)."""
    cols, rows = choose_grid(*tiled_size(width, height, settings), settings)
    tiles = cols * rows
    return tiles + 1 if settings.use_thumbnail and tiles > 1 else tiles


def tile_image(image: Image.Image, settings: TilingSettings = TilingSettings()) -> np.ndarray:
    """RGB image -> tiles: uint8 [n, S, S, 3], row-major, thumbnail last when n > 1.

    Pixel for pixel what the reference computes (resize the whole image, crop each tile, resize the original
    for the thumbnail), with less work: uint8 all the way (the encoder normalizes), one resize for the grid
    and tiles cut by a strided copy into the output instead of a PIL crop and a float conversion per tile.
    """
    size = settings.tile_size
    if settings.upscale_2x:
        image = image.resize((2 * image.width, 2 * image.height), UPSCALE_RESAMPLE)
    cols, rows = choose_grid(image.width, image.height, settings)
    thumbnail = settings.use_thumbnail and cols * rows > 1
    tiles = np.empty((cols * rows + thumbnail, size, size, 3), np.uint8)
    grid = np.asarray(image.resize((cols * size, rows * size), RESAMPLE))
    # [rows*S, cols*S, 3] -> [rows, cols, S, S, 3]: one copy, straight into the output.
    tiles[:cols * rows].reshape(rows, cols, size, size, 3)[:] = \
        grid.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    if thumbnail:
        tiles[-1] = np.asarray(image.resize((size, size), RESAMPLE))
    return tiles
