import base64
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from nanovl.core.checkpoint import WeightFiles
from nanovl.core.errors import ServerError
from nanovl.core.vision import attention_names, load_vision, pixel_shuffle, radio_state_dict


def reference_embeddings(config, tiles: torch.Tensor) -> torch.Tensor:
    """An independent forward from the checkpoint's own tensor names (NVlabs RADIO / timm), written from
    MODEL-FACTS 2: CLIP conditioner, Im2Patches + linear, bilinear CPE resize, prefix tokens, pre-norm ViT blocks
    (LayerNorm eps 1e-6, exact GELU), drop the prefix, the documented pixel shuffle v2, then mlp1.

    tiles: uint8 [n, S, S, 3] -> [n, 256, llm_hidden]
    """
    w = {k[len("vision_model.radio_model."):]: v for k, v in load_file(str(config.path / "model.safetensors")).items()
         if k.startswith("vision_model.radio_model.")}
    mlp1 = {k: v for k, v in load_file(str(config.path / "model.safetensors")).items() if k.startswith("mlp1.")}
    n = tiles.shape[0]
    p, side = config.patch_size, tiles.shape[1] // config.patch_size
    x = tiles.permute(0, 3, 1, 2).double() / 255
    x = (x - w["input_conditioner.norm_mean"].double()) / w["input_conditioner.norm_std"].double()
    x = x.reshape(n, 3, side, p, side, p).permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, 3 * p * p)
    x = x @ w["model.patch_generator.embedder.weight"].double().T
    pos = w["model.patch_generator.pos_embed"].double()
    grid = int(pos.shape[1] ** 0.5)
    pos = pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(side, side), mode="bilinear", align_corners=False)
    x = x + pos.permute(0, 2, 3, 1).reshape(1, side * side, -1)
    prefix = w["model.patch_generator.cls_token.token"].double()
    x = torch.cat([prefix.expand(n, -1, -1), x], dim=1)
    width, heads = x.shape[-1], config.vision.num_heads
    for i in range(config.vision.num_layers):
        b = {k[len(f"model.blocks.{i}."):]: v.double() for k, v in w.items() if k.startswith(f"model.blocks.{i}.")}
        h = F.layer_norm(x, (width,), b["norm1.weight"], b["norm1.bias"], eps=1e-6)
        q, k, v = (h @ b["attn.qkv.weight"].T + b["attn.qkv.bias"]).reshape(n, -1, 3, heads, width // heads).unbind(2)
        attn = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / (width // heads) ** 0.5, dim=-1)
        x = x + torch.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, -1, width) @ b["attn.proj.weight"].T \
            + b["attn.proj.bias"]
        h = F.layer_norm(x, (width,), b["norm2.weight"], b["norm2.bias"], eps=1e-6)
        x = x + F.gelu(h @ b["mlp.fc1.weight"].T + b["mlp.fc1.bias"]) @ b["mlp.fc2.weight"].T + b["mlp.fc2.bias"]
    x = x[:, prefix.shape[0]:]
    # HF modeling.py pixel_shuffle, ps_version v2, as MODEL-FACTS 2 quotes it
    c = x.shape[-1]
    x = x.reshape(n, side, side, c).view(n, side, side // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, side // 2, side // 2, c * 4).permute(0, 2, 1, 3).contiguous().reshape(n, -1, c * 4)
    m = {k: v.double() for k, v in mlp1.items()}
    x = F.layer_norm(x, (c * 4,), m["mlp1.0.weight"], m["mlp1.0.bias"], eps=1e-5)
    x = F.gelu(x @ m["mlp1.1.weight"].T + m["mlp1.1.bias"]) @ m["mlp1.3.weight"].T + m["mlp1.3.bias"]
    return x.float()


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
    radio = encoder.radio.state_dict()
    q, k, v, _ = attention_names(radio)   # as this transformers names them
    torch.testing.assert_close(torch.cat([radio[f"encoder.layer.1.{name}.weight"] for name in (q, k, v)]), qkv)
    torch.testing.assert_close(encoder.mlp1[3].weight, weights["mlp1.3.weight"])
    # tiles are independent: a batch equals its tiles one at a time
    torch.testing.assert_close(encoder(tiles[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


# RadioModel's state_dict keys as transformers names them, read from each release's models/radio/modeling_radio.py:
# it first shipped in 5.13 with ViT's nested attention modules, renamed Llama-style in 5.18 (a 5.17 machine failed
# with "vision weights missing: ['encoder.layer.0.attention.attention.key.bias', ...]").
_MODEL_KEYS = ["summary_idxs", "input_conditioner.norm_mean", "input_conditioner.norm_std",
               "embeddings.position_embedding", "embeddings.cls_register_token", "embeddings.patch_projection.weight"]
_LAYER_KEYS = {
    "5.13-5.17": ["norm1.weight", "norm1.bias",
                  "attention.attention.query.weight", "attention.attention.query.bias",
                  "attention.attention.key.weight", "attention.attention.key.bias",
                  "attention.attention.value.weight", "attention.attention.value.bias",
                  "attention.output.dense.weight", "attention.output.dense.bias", "layer_scale1.lambda1",
                  "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                  "layer_scale2.lambda1"],
    "5.18+": ["norm1.weight", "norm1.bias", "attention.q_proj.weight", "attention.q_proj.bias",
              "attention.k_proj.weight", "attention.k_proj.bias", "attention.v_proj.weight", "attention.v_proj.bias",
              "attention.o_proj.weight", "attention.o_proj.bias", "layer_scale1.lambda1", "norm2.weight",
              "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
              "layer_scale2.lambda1"],
}
# The projections of each naming, in the order of timm's fused qkv, then the output projection.
_PROJECTIONS = {"5.13-5.17": ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                              "attention.output.dense"),
                "5.18+": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")}


@pytest.mark.parametrize("release", _LAYER_KEYS)
def test_checkpoint_names_map_onto_each_releases_radio_model(config, release):
    keys = _MODEL_KEYS + [f"encoder.layer.{i}.{key}" for i in range(config.vision.num_layers)
                          for key in _LAYER_KEYS[release]]
    checkpoint = WeightFiles(config.path).load("vision_model.radio_model.")
    state = radio_state_dict(checkpoint, keys)
    # Every weight but LayerScale (absent in C-RADIO) and the summary indices (a buffer the model makes), no other.
    assert set(state) == {k for k in keys if "layer_scale" not in k and k != "summary_idxs"}
    q, k, v, out = _PROJECTIONS[release]
    for i in range(config.vision.num_layers):
        block, layer = f"model.blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            fused = checkpoint[f"{block}attn.qkv.{kind}"]
            torch.testing.assert_close(torch.cat([state[f"{layer}{name}.{kind}"] for name in (q, k, v)]), fused)
            torch.testing.assert_close(state[f"{layer}{out}.{kind}"], checkpoint[f"{block}attn.proj.{kind}"])


def test_installed_radio_model_is_one_of_them():
    from transformers import RadioConfig, RadioModel

    keys = RadioModel(RadioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).state_dict()
    release = next((r for r, names in _PROJECTIONS.items() if names == attention_names(keys)), None)
    assert release and set(keys) == set(_MODEL_KEYS + [f"encoder.layer.0.{k}" for k in _LAYER_KEYS[release]])


def test_an_unknown_attention_naming_is_refused_clearly():
    with pytest.raises(ServerError, match=r"does not know: \['encoder.layer.0.attention.qkv.weight'\]"):
        attention_names(["embeddings.position_embedding", "encoder.layer.0.attention.qkv.weight"])


def test_identical_tiles_give_identical_embeddings(config):
    encoder = load_vision(config)
    tile = torch.from_numpy(np.full((1, 512, 512, 3), 90, np.uint8))
    out = encoder(torch.cat([tile, tile]))
    torch.testing.assert_close(out[0], out[1])


def test_encoder_equals_the_independent_reference(config):
    tiles = torch.randint(0, 256, (2, 512, 512, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(load_vision(config)(tiles), reference_embeddings(config, tiles), atol=1e-4, rtol=1e-4)


def test_llm_logits_on_an_image_prompt_equal_the_reference(config, tokenizer, hf_llm):
    """Our path (preprocessing ids, our encoder, our LLM loader, rows by id - vocab_size) against transformers'
    LlamaForCausalLM fed the reference embeddings at the <image> positions of the chat() prompt."""
    from nanovl.core.checkpoint import load_llm
    from nanovl.core.preprocess import Preprocessor

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 700, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is this?"}]}]
    ours = Preprocessor(config, tokenizer)(json.dumps(messages))
    table = load_vision(config)(torch.from_numpy(ours.tiles)).reshape(-1, config.llm_hidden_size)
    ids = torch.from_numpy(ours.input_ids).long()
    llm = load_llm(config, dtype="float32")
    image_rows = ids >= config.vocab_size
    embeds = llm.get_input_embeddings()(ids.clamp(max=config.vocab_size - 1))
    embeds[image_rows] = table[ids[image_rows] - config.vocab_size]
    with torch.no_grad():
        got = llm(inputs_embeds=embeds[None]).logits[0]

    span = "<img>" + "<image>" * (len(ours.tiles) * config.tokens_per_tile) + "</img>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": span + "\nWhat is this?"}],
                                             tokenize=False, add_generation_prompt=True)
    ref_ids = torch.tensor(tokenizer(rendered, add_special_tokens=False).input_ids)
    assert len(ref_ids) == len(ids)
    ref_embeds = hf_llm.get_input_embeddings()(ref_ids)
    ref_embeds[ref_ids == tokenizer.convert_tokens_to_ids("<image>")] = \
        reference_embeddings(config, torch.from_numpy(ours.tiles)).reshape(-1, config.llm_hidden_size)
    with torch.no_grad():
        want = hf_llm(inputs_embeds=ref_embeds[None]).logits[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
