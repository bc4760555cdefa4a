"""A checkpoint of the real format with random weights, at the real model's geometry or a toy one: what
`python -m bench.gpu` measures and `python -m bench.vision --real-size` runs. A Geometry also holds the sizes a
bench.gpu run measures at, so that `--geometry small` shrinks the checkpoint and the run together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from build import tiny_checkpoint
from nanovl.core.checkpoint import CheckpointConfig, load_config


@dataclass(frozen=True)
class Geometry:
    llm: dict                    # LlamaConfig sizes; the vocabulary is the real tokenizer's, padded (128320)
    vit: tuple[int, int, int, int]   # width, depth, heads, mlp
    vit_name: str                # timm name in vision_config.args.model ("" = spell the geometry out)
    projector_hidden_size: int
    # Run sizes: (prompt tokens, prompts) for prefill; decode concurrencies, prompt and output tokens;
    # tile batches; matmul side and copy bytes for the peaks.
    prefill: tuple[int, int] = (2048, 8)
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    decode_prompt: int = 128
    decode_tokens: int = 128
    tile_batches: tuple[int, ...] = (1, 13, 52)
    matmul: int = 8192
    copy_bytes: int = 4 << 30
    repeats: dict = field(default_factory=lambda: {"matmul": 50, "copy": 20, "vision": 5})


# Llama-3.1-8B-Instruct and C-RADIOv2-H (../shared/MODEL-FACTS.md 1.2, 2).
REAL = Geometry(llm=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128),
                vit=(1280, 32, 16, 5120), vit_name="vit_huge_patch16_224",
                projector_hidden_size=4096)
SMALL = Geometry(llm=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=32),
                 vit=(64, 2, 2, 256), vit_name="", projector_hidden_size=128,
                 prefill=(64, 2), concurrency=(1, 4), decode_prompt=16, decode_tokens=8, tile_batches=(1, 3),
                 matmul=512, copy_bytes=16 << 20, repeats={"matmul": 2, "copy": 2, "vision": 1})
GEOMETRIES = {"real": REAL, "small": SMALL}


def write_config(out: Path, geometry: Geometry) -> CheckpointConfig:
    """config.json, generation_config.json and tokenizer files of the real format at `geometry`."""
    tokenizer = tiny_checkpoint.llama31_tokenizer()
    llm = {**tiny_checkpoint.llm_config(tiny_checkpoint.padded_vocab(tokenizer), tokenizer), **geometry.llm,
           "torch_dtype": "bfloat16"}
    vision = tiny_checkpoint.vision_config()
    width, depth, heads, mlp = geometry.vit
    args = vision["args"]
    args.update(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp / width, dtype="bfloat16")
    if geometry.vit_name:   # the real checkpoint names its timm ViT instead of spelling out its geometry
        for key in ("embed_dim", "depth", "num_heads", "mlp_ratio"):
            del args[key]
        args["model"] = geometry.vit_name
    tiny_checkpoint.write_metadata(out, tokenizer, tiny_checkpoint.model_config(
        llm, vision, vit_hidden_size=width, projector_hidden_size=geometry.projector_hidden_size,
        torch_dtype="bfloat16"))
    return load_config(out)


def write_weights(config: CheckpointConfig, device: torch.device, *, llm_weights: bool = True) -> None:
    """Random bf16 weights under the real names; llm_weights=False writes the vision part only (all the vision
    encoder's loader reads)."""
    from safetensors.torch import save_file

    weight_map = _write_llm_weights(config, device) if llm_weights else {}
    cpu, vit = torch.Generator().manual_seed(0), config.vision
    # 1/sqrt(width), as trained encoders scale: the tiny checkpoint's 0.2 makes attention chaotic at width 1280.
    rest = tiny_checkpoint.vision_weights(cpu, width=vit.hidden_size, depth=vit.num_layers, mlp=vit.mlp_dim,
                                          prefix_tokens=vit.num_cls_tokens + vit.num_registers,
                                          std=min(0.2, vit.hidden_size ** -0.5))
    rest.update(tiny_checkpoint.projector_weights(cpu, merged=vit.hidden_size * 4, hidden=config.projector_hidden_size,
                                                  out=config.llm_hidden_size))
    rest = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in rest.items()}
    save_file(rest, str(config.path / "vision.safetensors"), metadata={"format": "pt"})
    weight_map.update({key: "vision.safetensors" for key in rest})
    index = {"metadata": {}, "weight_map": weight_map}
    (config.path / "model.safetensors.index.json").write_text(json.dumps(index))


def _write_llm_weights(config: CheckpointConfig, device: torch.device) -> dict[str, str]:
    """The LLM's weights in shards of ~2 GB at the real size, one in host memory at a time, drawn on `device`
    (drawing 8B numbers on a CPU takes minutes). -> weight name -> file."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in config.llm_config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(LlamaConfig(**cfg)).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(0)
    shards: dict[str, list[str]] = {}
    for name in shapes:
        layer = name.split(".")[2] if name.startswith("model.layers.") else "-1"
        shards.setdefault(f"llm-{(int(layer) + 1) // 4:02d}.safetensors", []).append(name)
    weight_map = {}
    for file, names in shards.items():
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensor = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                tensor = (torch.randn(shapes[name], generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()
            tensors[f"language_model.{name}"] = tensor
        save_file(tensors, str(config.path / file), metadata={"format": "pt"})
        weight_map.update({key: file for key in tensors})
    return weight_map

