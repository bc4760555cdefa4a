"""Writes a tiny checkpoint in the exact format of nvidia/Llama-3.1-Nemotron-Nano-VL-8B-V1.

Same files, config keys, weight names, tokenizer (Meta's Llama-3.1 BPE with the real ids of every special
token) and chat template as the real checkpoint; tiny widths and depths and random weights, but the real tile
size (512) and patch size (16), so tiling, prompt expansion, token counts and the vision path run exactly as on
the real model. Deterministic from --seed. Needs the `checkpoint` extra (llama-models, tiktoken).

    python -m build.tiny_checkpoint OUT_DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from nanovl.core.prompt import NIM_CHAT_TEMPLATE

# Llama 3.1's 256 reserved special tokens after the 128,000 BPE ranks (Llama-3.1-8B-Instruct's tokenizer.json). The
# llama-models package's own list is Llama 3.2's (<|step_id|> at 128005, <|image|> at 128011): not this model's.
_LLAMA_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                   6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                   10: "<|python_tag|>"}
# Added after the Llama specials when the model was trained, in this order (Megatron --special-tokens).
MULTIMODAL_TOKENS = ["<image>", "<img>", "</img>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]


def llama_specials() -> list[str]:
    """The 256 names in id order: the unnamed slots are reserved_special_token_0, 1, then 2, then 3 ... 247."""
    return [_LLAMA_SPECIALS.get(i, f"<|reserved_special_token_{i - 2 if i < 4 else i - 3 if i < 6 else i - 8}|>")
            for i in range(256)]


@functools.lru_cache(maxsize=1)
def _llama31_tokenizer_json() -> str:
    """Meta's Llama-3.1 BPE, read from the tiktoken file the llama-models package ships (importlib.resources), as
    tokenizer.json text; converting takes a few seconds, so a process that writes several checkpoints does it once."""
    from importlib import resources

    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model = resources.files("llama_models") / "llama3" / "tokenizer.model"
    with resources.as_file(model) as path:
        tokenizer = TikTokenConverter(vocab_file=str(path)).converted()
    if tokenizer.get_vocab_size() != 128000:
        raise RuntimeError(f"{model}: {tokenizer.get_vocab_size()} BPE ranks, not Llama 3.1's 128000")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in llama_specials() + MULTIMODAL_TOKENS])
    # As Meta's tokenizer.json: offsets kept byte-level, and <|begin_of_text|> put first by the tokenizer itself.
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tokenizer.token_to_id(bos))])])
    return tokenizer.to_str()


def llama31_tokenizer():
    """The real checkpoint's tokenizer: Llama 3.1's (128,000 ranks, specials at 128000-128255), then the 9
    multimodal tokens at 128256-128264 (MODEL-FACTS 1.4). -> a tokenizers.Tokenizer of 128,265 entries."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_llama31_tokenizer_json())


def save_tokenizer(tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # No pad token: the real tokenizer has none (MODEL-FACTS 1.4), and nothing here may need one.
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", clean_up_tokenization_spaces=False,
                                   model_max_length=16384)
    # The checkpoint's own template is the one NIM renders (see nanovl.core.prompt): what the real checkpoint
    # ships is not known (MODEL-FACTS 9), and NIM, which serves it, counts exactly this rendering.
    fast.chat_template = NIM_CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    # The real checkpoint was saved by transformers 4.x: its tokenizer_config.json names PreTrainedTokenizerFast,
    # which every version loads, and has no "backend" key. transformers 5 writes its own class name
    # (TokenizersBackend), which the GPU container's transformers 4.45 does not know.
    config_file = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("backend", None)
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def llm_config(vocab_size: int, tok) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": tok.token_to_id("<|begin_of_text|>"),
        # Llama-3.1-8B-Instruct's config: its three stop tokens, and no pad token.
        "eos_token_id": [tok.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
        "torch_dtype": "float32",
    }


def vision_config() -> dict:
    teachers = [{"name": n} for n in ("clip", "siglip", "dino_v2", "sam")]
    return {
        "architectures": ["RADIOModel"], "model_type": "radio",
        # The real config.json's names: C-RADIO's remote code in its own HF repository (never run here).
        "auto_map": {"AutoConfig": "nvidia/C-RADIOv2-H--hf_model.RADIOConfig",
                     "AutoModel": "nvidia/C-RADIOv2-H--hf_model.RADIOModel"},
        "version": "c-radio_v2-vlm-h", "patch_size": 16, "max_resolution": 2048,
        "preferred_resolution": [768, 768], "adaptor_names": None, "vitdet_window_size": None,
        # A real checkpoint names a timm ViT ("vit_huge_patch16_224"); a tiny one spells its geometry out.
        "args": {"model": "vit_tiny_nanovl_patch16", "embed_dim": 32, "depth": 2, "num_heads": 2,
                 "mlp_ratio": 4.0, "cpe_max_size": 2048, "cls_token_per_teacher": True,
                 "register_multiple": 8, "teachers": teachers, "dtype": "float32"},
    }


def vision_weights(gen: torch.Generator, *, width: int, depth: int, mlp: int, prefix_tokens: int,
                   std: float = 0.2) -> dict:
    """std: of the block matrices. 0.2 keeps the tiny model's greedy choices far from ties; at the real width
    it makes activations so large that attention turns chaotic (float32 runtimes disagree), so a real-size
    random encoder takes a trained-like scale."""
    def rand(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    positions = (2048 // 16) ** 2
    p = "vision_model.radio_model."
    w = {p + "model.patch_generator.embedder.weight": rand(width, 3 * 16 * 16),
         p + "model.patch_generator.pos_embed": rand(1, positions, width),
         p + "model.patch_generator.cls_token.token": rand(prefix_tokens, width),
         p + "input_conditioner.norm_mean": torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1),
         p + "input_conditioner.norm_std": torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1),
         p + "summary_idxs": torch.tensor([0, 1, 2], dtype=torch.int64)}
    for i in range(depth):
        b = f"{p}model.blocks.{i}."
        w.update({b + "norm1.weight": 1 + rand(width), b + "norm1.bias": rand(width),
                  b + "attn.qkv.weight": rand(3 * width, width, std=std), b + "attn.qkv.bias": rand(3 * width),
                  b + "attn.proj.weight": rand(width, width, std=std), b + "attn.proj.bias": rand(width),
                  b + "norm2.weight": 1 + rand(width), b + "norm2.bias": rand(width),
                  b + "mlp.fc1.weight": rand(mlp, width, std=std), b + "mlp.fc1.bias": rand(mlp),
                  b + "mlp.fc2.weight": rand(width, mlp, std=std), b + "mlp.fc2.bias": rand(width)})
    return w


def projector_weights(gen: torch.Generator, *, merged: int, hidden: int, out: int) -> dict:
    return {"mlp1.0.weight": 1 + torch.randn(merged, generator=gen) * 0.02,
            "mlp1.0.bias": torch.randn(merged, generator=gen) * 0.02,
            "mlp1.1.weight": torch.randn(hidden, merged, generator=gen) * 0.1,
            "mlp1.1.bias": torch.zeros(hidden),
            "mlp1.3.weight": torch.randn(out, hidden, generator=gen) * 0.1,
            "mlp1.3.bias": torch.zeros(out)}


def llm_weights(config: dict, seed: int, tokenizer_size: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    # A wider init than transformers' 0.02 so the random model's greedy choices are far from ties.
    model = LlamaForCausalLM(LlamaConfig(**cfg, initializer_range=0.2))
    state = model.state_dict()
    # Rows past the tokenizer pad the vocabulary and are never trained: zero, as a padded table starts.
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name][tokenizer_size:] = 0
    return {f"language_model.{k}": v.contiguous() for k, v in state.items()}


def model_config(llm: dict, vision: dict, *, vit_hidden_size: int, projector_hidden_size: int,
                 torch_dtype: str) -> dict:
    """The top-level config.json of the real checkpoint around an LLM and a vision config."""
    return {
        "architectures": ["Llama_Nemotron_Nano_VL"], "model_type": "Llama_Nemotron_Nano_VL",
        "auto_map": {"AutoConfig": "configuration.Llama_Nemotron_Nano_VL_Config",
                     "AutoModel": "modeling.Llama_Nemotron_Nano_VL",
                     "AutoModelForCausalLM": "modeling.Llama_Nemotron_Nano_VL"},
        "downsample_ratio": 0.5, "force_image_size": 512, "patch_size": 16, "ps_version": "v2",
        "image_tag_type": "internvl", "template": "llama-3.1-nemotron-nano-vl", "vit_hidden_size": vit_hidden_size,
        "projector_hidden_size": projector_hidden_size, "torch_dtype": torch_dtype, "llm_config": llm,
        "vision_config": vision, "nanovl_tiny_random_weights": True,
    }


def write_metadata(out: Path, tokenizer, config: dict) -> None:
    """config.json, generation_config.json and the tokenizer files."""
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, out)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    llm = config["llm_config"]
    generation = {"bos_token_id": llm["bos_token_id"], "eos_token_id": llm["eos_token_id"],
                  "do_sample": False, "transformers_version": "5.0.0"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def padded_vocab(tokenizer) -> int:
    """The embedding's rows: 128,265 tokens padded to a multiple of 64, 128320, as Megatron pads a vocabulary
    (the real llm_config.vocab_size is not known, MODEL-FACTS 1.2). So nothing may take vocab_size for
    len(tokenizer): ids 128265-128319 are rows no tokenizer entry names."""
    return -(-tokenizer.get_vocab_size() // 64) * 64


def write(out: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    tokenizer = llama31_tokenizer()
    llm = llm_config(padded_vocab(tokenizer), tokenizer)
    write_metadata(out, tokenizer, model_config(llm, vision_config(), vit_hidden_size=32, projector_hidden_size=64,
                                                torch_dtype="float32"))
    gen = torch.Generator().manual_seed(seed)
    weights = llm_weights(llm, seed, tokenizer.get_vocab_size())
    weights.update(vision_weights(gen, width=32, depth=2, mlp=128, prefix_tokens=8))
    weights.update(projector_weights(gen, merged=32 * 4, hidden=64, out=llm["hidden_size"]))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, args.seed)
    print(f"tiny checkpoint (random weights) written to {args.out}")


if __name__ == "__main__":
    main()
