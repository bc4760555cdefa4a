"""Vision encoder: C-RADIO ViT -> pixel shuffle -> mlp1 projector -> LLM-width embeddings, 256 per 512px tile.

transformers' RadioModel reproduces C-RADIOv2 (class + register prefix tokens dropped from `features`,
bilinear resize of the CPE position embeddings, CLIP input conditioner), so it is used as is; only the key
map from the checkpoint's NVlabs/timm names and the pixel shuffle + projector are ours.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .checkpoint import CheckpointConfig, WeightFiles, torch_dtype
from .errors import ServerError

_RADIO_PREFIX = "vision_model.radio_model."
# NVlabs RADIO / timm names (after `vision_model.radio_model.`) -> transformers RadioModel names.
_RADIO_RENAMES = [
    (r"^model\.patch_generator\.embedder\.", "embeddings.patch_projection."),
    (r"^model\.patch_generator\.pos_embed$", "embeddings.position_embedding"),
    (r"^model\.patch_generator\.cls_token\.token$", "embeddings.cls_register_token"),
    (r"^model\.blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.o_proj."),
    (r"^model\.blocks\.(\d+)\.", r"encoder.layer.\1."),
    (r"^input_conditioner\.", "input_conditioner."),
]


def radio_state_dict(checkpoint: dict) -> dict:
    """Rename checkpoint tensors for RadioModel; split timm's fused qkv into q/k/v projections."""
    state = {}
    for key, tensor in checkpoint.items():
        for pattern, repl in _RADIO_RENAMES:
            if re.search(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        else:
            continue   # summary indices, adaptor heads: summary machinery the VLM does not use
        if ".attn.qkv." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                state[key.replace("attn.qkv", f"attention.{name}")] = part
        else:
            state[key] = tensor
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
    radio_state = radio_state_dict(weights.load(_RADIO_PREFIX))
    # LayerScale is absent in C-RADIO (identity at 1.0); everything else must come from the checkpoint.
    missing = {k for k in encoder.radio.state_dict()
               if k not in radio_state and "layer_scale" not in k and k != "summary_idxs"}
    if missing:
        raise ServerError(f"{config.path}: vision weights missing: {sorted(missing)[:5]}")
    encoder.radio.load_state_dict(radio_state, strict=False)
    encoder.mlp1.load_state_dict(weights.load("mlp1."), strict=True)
    return encoder.to(device=device, dtype=torch_dtype(dtype or config.torch_dtype)).eval()
