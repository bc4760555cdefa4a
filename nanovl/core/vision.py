"""Vision encoder: C-RADIO ViT -> pixel shuffle -> mlp1 projector -> LLM-width embeddings, 256 per 512px tile.

transformers' RadioModel reproduces C-RADIOv2 (class + register prefix tokens dropped from `features`,
bilinear resize of the CPE position embeddings, CLIP input conditioner), so it is used as is; only the key
map from the checkpoint's NVlabs/timm names and the pixel shuffle + projector are ours.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from .checkpoint import CheckpointConfig, WeightFiles, torch_dtype
from .errors import ServerError

_RADIO_PREFIX = "vision_model.radio_model."
# NVlabs RADIO / timm names (after `vision_model.radio_model.`) -> transformers RadioModel names; a layer's
# attention (`attn.qkv`, `attn.proj`) is named by _ATTENTION_NAMES.
_RADIO_RENAMES = [
    (r"^model\.patch_generator\.embedder\.", "embeddings.patch_projection."),
    (r"^model\.patch_generator\.pos_embed$", "embeddings.position_embedding"),
    (r"^model\.patch_generator\.cls_token\.token$", "embeddings.cls_register_token"),
    (r"^model\.blocks\.(\d+)\.", r"encoder.layer.\1."),
    (r"^input_conditioner\.", "input_conditioner."),
]
# RadioModel's names for a layer's query, key, value and output projections. It shipped in transformers 5.13 with
# ViT's nested attention modules and took Llama-style names in 5.18; the model's own keys say which it has.
_ATTENTION_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),   # 5.18 and later
    ("attention.attention.query", "attention.attention.key", "attention.attention.value",
     "attention.output.dense"),                                                          # 5.13 to 5.17
)


def attention_names(model_keys: Iterable[str]) -> tuple[str, str, str, str]:
    """The (query, key, value, output) module names of a RadioModel's attention, read off its state_dict keys."""
    keys = set(model_keys)
    for names in _ATTENTION_NAMES:
        if f"encoder.layer.0.{names[0]}.weight" in keys:
            return names
    seen = sorted(k for k in keys if k.startswith("encoder.layer.0.attention"))
    raise ServerError(f"transformers' RadioModel names its attention weights in a way nanovl does not know: {seen}")


def radio_state_dict(checkpoint: dict, model_keys: Iterable[str]) -> dict:
    """Rename checkpoint tensors to the names of the RadioModel whose state_dict keys are `model_keys`; split
    timm's fused qkv into the q/k/v projections."""
    *qkv_names, output = attention_names(model_keys)
    state = {}
    for key, tensor in checkpoint.items():
        for pattern, repl in _RADIO_RENAMES:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        else:
            continue   # summary indices, adaptor heads: summary machinery the VLM does not use
        if ".attn.qkv." in key:
            for name, part in zip(qkv_names, tensor.chunk(3, dim=0)):
                state[key.replace(".attn.qkv.", f".{name}.")] = part
        else:
            state[key.replace(".attn.proj.", f".{output}.")] = tensor
    return state


def pixel_shuffle(features: torch.Tensor, *, scale: float, version: str) -> torch.Tensor:
    """Space-to-depth as the model's `pixel_shuffle` (HF modeling.py), 4 neighbours -> 1 token.

    features: [n, h*w, c] -> [n, h*w*scale^2, c/scale^2]
    """
    n, length, c = features.shape
    side = int(length ** 0.5)
    x = features.reshape(n, side, side, c)
    n, w, h, c = x.shape   # the reference names the axes this way round
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    if version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()   # v2 undoes the transposition v1 leaves behind
    return x.reshape(n, -1, x.shape[-1])


class VisionEncoder(nn.Module):
    def __init__(self, config: CheckpointConfig):
        super().__init__()
        from transformers import RadioConfig, RadioModel

        v = config.vision
        self.config = config
        self.radio = RadioModel(RadioConfig(
            hidden_size=v.hidden_size, num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
            mlp_ratio=v.mlp_dim / v.hidden_size, patch_size=v.patch_size, image_size=config.image_size,
            max_img_size=v.max_img_size, num_cls_tokens=v.num_cls_tokens, num_registers=v.num_registers,
        ))
        merged = int(config.vit_hidden_size / config.downsample_ratio ** 2)
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(merged), nn.Linear(merged, config.projector_hidden_size), nn.GELU(),
            nn.Linear(config.projector_hidden_size, config.llm_hidden_size),
        )

    @torch.inference_mode()
    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles: uint8 [n, S, S, 3] (RGB, S = tile side) -> embeddings [n, tokens_per_tile, llm_hidden]."""
        dtype = self.mlp1[1].weight.dtype
        # [0, 1] pixels; CLIP normalization happens in RadioModel's input conditioner, as in the reference.
        pixels = tiles.permute(0, 3, 1, 2).to(dtype) / 255.0
        features = self.radio(pixel_values=pixels).features
        shuffled = pixel_shuffle(features, scale=self.config.downsample_ratio, version=self.config.ps_version)
        return self.mlp1(shuffled)


def load_vision(config: CheckpointConfig, *, dtype: str | None = None, device: str = "cpu") -> VisionEncoder:
    weights = WeightFiles(config.path)
    encoder = VisionEncoder(config)
    radio_state = radio_state_dict(weights.load(_RADIO_PREFIX), encoder.radio.state_dict())
    # LayerScale is absent in C-RADIO (identity at 1.0); everything else must come from the checkpoint.
    missing = {k for k in encoder.radio.state_dict()
               if k not in radio_state and "layer_scale" not in k and k != "summary_idxs"}
    if missing:
        raise ServerError(f"{config.path}: vision weights missing: {sorted(missing)[:5]}")
    encoder.radio.load_state_dict(radio_state, strict=False)
    encoder.mlp1.load_state_dict(weights.load("mlp1."), strict=True)
    return encoder.to(device=device, dtype=torch_dtype(dtype or config.torch_dtype)).eval()
