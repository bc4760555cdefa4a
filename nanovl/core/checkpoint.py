"""Reads a checkpoint in the format of nvidia/Llama-3.1-Nemotron-Nano-VL-8B-V1.

The same code reads the real checkpoint and the tiny test checkpoint that `build/tiny_checkpoint.py` writes:
config.json (`llm_config` a Llama config, `vision_config` a C-RADIO config), generation_config.json, the
tokenizer files and safetensors weights named `language_model.*`, `vision_model.radio_model.*` and `mlp1.*`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import ServerError
from .limits import MAX_CONTEXT

ARCHITECTURE = "Llama_Nemotron_Nano_VL"
IMAGE_CONTEXT_TOKEN = "<image>"   # the model's chat() uses '<image>' as the per-embedding context token
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"

# timm ViT names the C-RADIO config may carry in `vision_config.args.model`: (width, depth, heads, mlp width).
# Without a name, RADIO's own default model is ViT-H/16, this model's encoder (MODEL-FACTS 2).
DEFAULT_VIT = "vit_huge_patch16_224"
_TIMM_VIT_DIMS = {
    "vit_base_patch16_224": (768, 12, 12, 3072),
    "vit_large_patch16_224": (1024, 24, 16, 4096),
    "vit_huge_patch16_224": (1280, 32, 16, 5120),
}


@dataclass(frozen=True)
class VisionSpec:
    """C-RADIO ViT geometry, derived from `vision_config` the way the RADIO code derives it."""

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    max_img_size: int
    num_cls_tokens: int
    num_registers: int

    @classmethod
    def from_config(cls, vision_config: dict) -> "VisionSpec":
        args = vision_config.get("args") or {}
        name = args.get("model")
        if name in _TIMM_VIT_DIMS:
            width, depth, heads, mlp = _TIMM_VIT_DIMS[name]
        elif {"embed_dim", "depth", "num_heads"} <= args.keys():
            # Not a timm name: the geometry must be spelled out (the tiny test checkpoint does this).
            width, depth, heads = args["embed_dim"], args["depth"], args["num_heads"]
            mlp = int(width * args.get("mlp_ratio", 4.0))
        elif not name:
            width, depth, heads, mlp = _TIMM_VIT_DIMS[DEFAULT_VIT]
        else:
            raise ServerError(f"vision_config.args.model {name!r} is not a known ViT and carries no geometry")
        # One class token per distinct teacher, then registers: `cpe_num_registers` when set, else up to a
        # multiple of `register_multiple` (RADIO's ClsToken, in that order: 4 teachers, multiple 8 -> 4 + 4).
        teachers = {t["name"] for t in args.get("teachers", [])} if args.get("cls_token_per_teacher") else set()
        num_cls = max(len(teachers), 1)
        multiple = args.get("register_multiple") or 0
        num_registers = args.get("cpe_num_registers") or (multiple - (num_cls % multiple) if multiple else 0)
        return cls(width, depth, heads, mlp, int(vision_config.get("patch_size", 16)),
                   int(args.get("cpe_max_size", vision_config.get("max_resolution", 2048))), num_cls, num_registers)


@dataclass(frozen=True)
class CheckpointConfig:
    path: Path
    llm_config: dict
    vision: VisionSpec
    image_size: int           # tile side in pixels (force_image_size)
    patch_size: int
    downsample_ratio: float
    ps_version: str
    vit_hidden_size: int
    projector_hidden_size: int
    torch_dtype: str
    eos_token_ids: tuple[int, ...]

    @property
    def vocab_size(self) -> int:
        """Rows of the LLM embedding; ids at or above it index the image prompt table (TensorRT-LLM's rule)."""
        return int(self.llm_config["vocab_size"])

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm_config["hidden_size"])

    @property
    def max_context(self) -> int:
        """Prompt plus generated tokens: the trained length, not the RoPE table's 128K."""
        return min(MAX_CONTEXT, int(self.llm_config.get("max_position_embeddings", MAX_CONTEXT)))

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        return int(side * side * self.downsample_ratio * self.downsample_ratio)


def load_config(path: str | Path) -> CheckpointConfig:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ServerError(f"{path} is not a checkpoint directory: no config.json")
    config = json.loads(config_file.read_text())
    if ARCHITECTURE not in config.get("architectures", []):
        raise ServerError(f"{config_file}: architectures {config.get('architectures')} lack {ARCHITECTURE!r}")
    for key in ("llm_config", "vision_config"):
        if key not in config:
            raise ServerError(f"{config_file}: missing {key!r}")
    generation = {}
    if (path / "generation_config.json").is_file():
        generation = json.loads((path / "generation_config.json").read_text())
    eos = generation.get("eos_token_id") or config["llm_config"].get("eos_token_id") or _tokenizer_eos(path)
    eos = (eos,) if isinstance(eos, int) else tuple(eos)
    return CheckpointConfig(
        path=path,
        llm_config=config["llm_config"],
        vision=VisionSpec.from_config(config["vision_config"]),
        image_size=int(config.get("force_image_size", 512)),
        patch_size=int(config.get("patch_size", 16)),
        downsample_ratio=float(config.get("downsample_ratio", 0.5)),
        ps_version=config.get("ps_version", "v1"),
        vit_hidden_size=int(config.get("vit_hidden_size", 1280)),
        projector_hidden_size=int(config.get("projector_hidden_size", 4096)),
        torch_dtype=config.get("torch_dtype", config["llm_config"].get("torch_dtype", "bfloat16")),
        eos_token_ids=eos,
    )


def _tokenizer_eos(path: Path) -> int:
    """The tokenizer's eos token id (<|eot_id|> for this model), for a checkpoint that names no other, read
    from the tokenizer files without loading the tokenizer."""
    tokenizer_config = path / "tokenizer_config.json"
    token = json.loads(tokenizer_config.read_text()).get("eos_token") if tokenizer_config.is_file() else None
    token = token.get("content") if isinstance(token, dict) else token
    if token and (path / "tokenizer.json").is_file():
        added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
        ids = [entry["id"] for entry in added if entry.get("content") == token]
        if ids:
            return ids[0]
    raise ServerError(f"{path}: no eos token in generation_config.json, config.json or the tokenizer")


class WeightFiles:
    """Safetensors weights of a checkpoint, single file or sharded (model.safetensors.index.json)."""

    def __init__(self, path: Path):
        self.path = path

    @cached_property
    def _key_to_file(self) -> dict[str, Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {key: self.path / name for key, name in weight_map.items()}
        from safetensors import safe_open

        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ServerError(f"{self.path}: no *.safetensors weights")
        mapping = {}
        for file in files:
            with safe_open(file, framework="pt") as handle:
                mapping.update({key: file for key in handle.keys()})
        return mapping

    def load(self, prefix: str) -> dict:
        """Tensors whose names start with `prefix`, with the prefix removed."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for key, file in self._key_to_file.items():
            if key.startswith(prefix):
                by_file.setdefault(file, []).append(key)
        if not by_file:
            raise ServerError(f"{self.path}: no weights under {prefix!r}")
        tensors = {}
        for file, keys in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for key in keys:
                    tensors[key[len(prefix):]] = handle.get_tensor(key)
        return tensors


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_llm(config: CheckpointConfig, *, dtype: str | None = None, device: str = "cpu"):
    """The language model as a transformers LlamaForCausalLM, from `language_model.*`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llm_config = {k: v for k, v in config.llm_config.items() if k not in ("architectures", "model_type")}
    llm_config.setdefault("tie_word_embeddings", False)
    hf_config = LlamaConfig(**llm_config)
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_config)
    state = WeightFiles(config.path).load("language_model.")
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (RoPE inverse frequencies) are not in the weights: build them for real.
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_config)
    return model.to(device=device, dtype=torch_dtype(dtype or config.torch_dtype)).eval()


def load_tokenizer(config: CheckpointConfig):
    # Not AutoTokenizer: config.json's auto_map points at the model's remote code, which we never run.
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(config.path))
    template = config.path / "chat_template.jinja"
    if not tokenizer.chat_template and template.is_file():
        # transformers before 4.47 reads the template only from tokenizer_config.json, and TensorRT-LLM 0.14's
        # container pins 4.45: a checkpoint saved with the template in its own file would lose it there.
        tokenizer.chat_template = template.read_text()
    return tokenizer
