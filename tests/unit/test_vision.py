import numpy as np
import torch
from safetensors.torch import load_file

from nanovl.vision import load_vision, pixel_shuffle


def reference_pixel_shuffle(x, scale=0.5):
    """What HF modeling.py's pixel_shuffle + the v2 transpose compute, spelled out: each output token (i, j)
    is the 2x2 patch block at rows 2i..2i+1, columns 2j..2j+1, flattened (row offset, column offset, channel)."""
    n, length, c = x.shape
    side = int(length ** 0.5)
    grid = x.reshape(n, side, side, c)
    half = int(side * scale)
    out = torch.empty(n, half, half, 4 * c)
    for i in range(half):
        for j in range(half):
            out[:, i, j] = grid[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].reshape(n, -1)
    return out.reshape(n, -1, 4 * c)


def test_pixel_shuffle_v2_matches_the_reference():
    x = torch.randn(2, 64, 8)
    torch.testing.assert_close(pixel_shuffle(x, scale=0.5, version="v2"), reference_pixel_shuffle(x))


def test_encoder_loads_real_names_and_gives_256_embeddings_per_tile(config):
    encoder = load_vision(config)
    tiles = torch.randint(0, 256, (3, 512, 512, 3), dtype=torch.uint8)
    out = encoder(tiles)
    assert out.shape == (3, config.tokens_per_tile, config.llm_hidden_size) == (3, 256, config.llm_hidden_size)
    weights = load_file(str(config.path / "model.safetensors"))
    qkv = weights["vision_model.radio_model.model.blocks.1.attn.qkv.weight"]
    w = encoder.radio.encoder.layer[1].attention
    torch.testing.assert_close(torch.cat([w.q_proj.weight, w.k_proj.weight, w.v_proj.weight]), qkv)
    torch.testing.assert_close(encoder.mlp1[3].weight, weights["mlp1.3.weight"])
    # tiles are independent: a batch equals its tiles one at a time
    torch.testing.assert_close(encoder(tiles[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


def test_identical_tiles_give_identical_embeddings(config):
    encoder = load_vision(config)
    tile = torch.from_numpy(np.full((1, 512, 512, 3), 90, np.uint8))
    out = encoder(torch.cat([tile, tile]))
    torch.testing.assert_close(out[0], out[1])
