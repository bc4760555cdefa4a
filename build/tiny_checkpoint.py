"""Writes a tiny checkpoint in the exact format of nvidia/Llama-3.1-Nemotron-Nano-VL-8B-V1.

Same files, config keys, weight names, tokenizer special tokens and chat template as the real checkpoint;
tiny widths and depths and random weights, but the real tile size (512) and patch size (16), so tiling,
prompt expansion and the vision path run exactly as on the real model. Deterministic from --seed.

    python -m build.tiny_checkpoint OUT_DIR [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

# Llama 3.1's 256 reserved special tokens, in id order after the base vocabulary.
_LLAMA_SPECIALS = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 4: "<|finetune_right_pad_id|>",
                   6: "<|start_header_id|>", 7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>",
                   10: "<|python_tag|>"}
# Added after the Llama specials when the model was trained, in this order (Megatron --special-tokens).
MULTIMODAL_TOKENS = ["<image>", "<img>", "</img>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
# Llama 3's pre-tokenizer split.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama-3.1 format without the forced system block (Megatron's llama3p1 template, which trained this model).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
BASE_VOCAB = 1024
_CORPUS_SEED_TEXT = """\
The quick brown fox jumps over the lazy dog. A picture shows a cat sitting on a red chair near the window.
Describe the image in detail. What is written on the sign? The chart compares revenue across four quarters.
Numbers like 12, 345 and 6789 appear in tables; prices are $3.50 or 4,200 euros. Hello, world!
Café, naïve, façade, jalapeño. 東京は日本の首都です。 这是一张图片。 Привет, мир. 안녕하세요. 🙂🚀👍🏽
def main():\n    return {"key": [1, 2, 3]}\n
"""


def train_tokenizer(seed: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = random.Random(seed)
    words = _CORPUS_SEED_TEXT.split()
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "ng", "qu"]
    # Pseudo-words give the trainer enough distinct pairs to learn exactly BASE_VOCAB tokens.
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    corpus = [_CORPUS_SEED_TEXT] + [" ".join(rng.choice(words) for _ in range(24)) for _ in range(2000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if tokenizer.get_vocab_size() != BASE_VOCAB:
        raise RuntimeError(f"BPE learned {tokenizer.get_vocab_size()} tokens, not {BASE_VOCAB}")
    specials = [_LLAMA_SPECIALS.get(i, f"<|reserved_special_token_{i - 2 if i < 4 else i - 3 if i < 6 else i - 8}|>")
                for i in range(256)]
    tokenizer.add_special_tokens(specials + MULTIMODAL_TOKENS)
    bos = BASE_VOCAB
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    return tokenizer


def save_tokenizer(tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>",
                                   clean_up_tokenization_spaces=False, model_max_length=16384)
    fast.chat_template = CHAT_TEMPLATE
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
        "eos_token_id": [tok.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
        "pad_token_id": tok.token_to_id("<|finetune_right_pad_id|>"), "torch_dtype": "float32",
    }


def vision_config() -> dict:
    teachers = [{"name": n} for n in ("clip", "siglip", "dino_v2", "sam")]
    return {
        "architectures": ["RADIOModel"], "model_type": "radio",
        "auto_map": {"AutoConfig": "hf_model.RADIOConfig", "AutoModel": "hf_model.RADIOModel"},
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
    return -(-tokenizer.get_vocab_size() // 64) * 64   # padded like Megatron pads the real vocabulary


def write(out: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    tokenizer = train_tokenizer(seed)
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
