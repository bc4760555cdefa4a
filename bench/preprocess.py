"""Preprocessing speed: our tiling against the straightforward reference, side by side, on one core.

    python -m bench.preprocess [--seconds 2]

Reference (vLLM's processor, spelled out): PIL resize of the whole image, a PIL crop per tile, a float
conversion per tile ([3, S, S] in [0, 1]), and the thumbnail. Ours: nanovl.core.tiling.tile_image (uint8 tiles,
one strided copy). Both start from the decoded RGB image; the decode column is the same for both and is
shown apart. Tiles are checked identical before timing.
"""
from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import torch
from PIL import Image

from nanovl.core.images import decode_image
from nanovl.core.tiling import RESAMPLE, choose_grid, tile_image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes plus sensor-like noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8))


def screenshot(width: int, height: int) -> Image.Image:
    """Flat panels and lines of 'text': compresses like a UI screenshot."""
    pixels = np.full((height, width, 3), 245, np.uint8)
    for y in range(40, height - 20, 22):
        pixels[y:y + 12, 30:width - 30 - (y * 37) % 300] = 40
    pixels[:36] = (30, 60, 120)
    return Image.fromarray(pixels)


def reference_tiles(image: Image.Image, size: int = 512) -> list[torch.Tensor]:
    cols, rows = choose_grid(image.width, image.height)
    resized = image.resize((cols * size, rows * size), RESAMPLE)
    crops = [resized.crop(((i % cols) * size, (i // cols) * size, (i % cols + 1) * size, (i // cols + 1) * size))
             for i in range(cols * rows)]
    if len(crops) > 1:
        crops.append(image.resize((size, size), RESAMPLE))
    return [torch.from_numpy(np.asarray(c).copy()).permute(2, 0, 1).float().div(255) for c in crops]


def rate(fn, seconds: float) -> float:
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # one core, whatever the machine
    cases = [("1920x1080 JPEG", photo(1920, 1080), "JPEG"), ("4000x3000 JPEG", photo(4000, 3000, 1), "JPEG"),
             ("640x480 PNG", photo(640, 480, 2), "PNG"), ("1280x2800 screenshot PNG", screenshot(1280, 2800), "PNG")]
    print(f"{'image':26} {'tiles':>5} {'decode/s':>9} {'ours img/s':>11} {'reference img/s':>16} {'ratio':>6}")
    for name, image, fmt in cases:
        buffer = io.BytesIO()
        image.save(buffer, fmt, quality=90)
        data = buffer.getvalue()
        decoded = decode_image(data, index=0)
        ours, ref = tile_image(decoded), reference_tiles(decoded)
        assert len(ours) == len(ref) and all(np.array_equal(o, (r * 255).round().byte().permute(1, 2, 0).numpy())
                                             for o, r in zip(ours, ref)), "tiles differ from the reference"
        decode_rate = rate(lambda: decode_image(data, index=0), args.seconds)
        ours_rate = rate(lambda: tile_image(decoded), args.seconds)
        ref_rate = rate(lambda: reference_tiles(decoded), args.seconds)
        print(f"{name:26} {len(ours):>5} {decode_rate:>9.1f} {ours_rate:>11.1f} {ref_rate:>16.1f} "
              f"{ours_rate / ref_rate:>5.2f}x")


if __name__ == "__main__":
    main()
