import json

import pytest
from safetensors import safe_open

from nanovl.core.checkpoint import load_config
from nanovl.core.errors import ServerError


def test_config_has_the_real_models_keys(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Llama_Nemotron_Nano_VL"]
    assert (config["downsample_ratio"], config["force_image_size"], config["patch_size"], config["ps_version"]) \
        == (0.5, 512, 16, "v2")
    assert config["llm_config"]["model_type"] == "llama"
    assert config["vision_config"]["args"]["register_multiple"] == 8
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (tiny_checkpoint / name).is_file()


@pytest.mark.needs_torch
def test_weights_use_the_real_names(tiny_checkpoint):
    with safe_open(tiny_checkpoint / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"language_model", "vision_model", "mlp1"}
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys
    assert "vision_model.radio_model.model.blocks.0.attn.qkv.weight" in keys
    assert "vision_model.radio_model.model.patch_generator.pos_embed" in keys
    assert {"mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight"} <= keys


def test_tokenizer_is_llama31s_with_the_multimodal_tokens(config, tokenizer):
    # Meta's 128,000 BPE ranks, Llama 3.1's 256 specials at their real ids, then the 9 added tokens.
    assert len(tokenizer) == 128265 and tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 128000
    named = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
             "<|reserved_special_token_1|>": 128003, "<|finetune_right_pad_id|>": 128004,
             "<|reserved_special_token_2|>": 128005, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
             "<|eom_id|>": 128008, "<|eot_id|>": 128009, "<|python_tag|>": 128010,
             "<|reserved_special_token_3|>": 128011, "<|reserved_special_token_247|>": 128255}
    assert tokenizer.convert_tokens_to_ids(list(named)) == list(named.values())
    mm = ["<image>", "<img>", "</img>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
    assert tokenizer.convert_tokens_to_ids(mm) == list(range(128256, 128265))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token) == (128000, 128009, None)
    # Meta's own ids for ordinary text ('Hello world' is [9906, 1917] in every Llama 3 tokenizer).
    assert tokenizer("Hello world").input_ids == [128000, 9906, 1917]
    # The embedding is padded past the tokenizer: vocab_size is not len(tokenizer).
    assert config.vocab_size == 128320 and config.vocab_size % 64 == 0
    assert set(config.eos_token_ids) == {128001, 128008, 128009}


def test_chat_template_is_nims_llama31_format_with_its_system_turn(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": " hi "}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\ndetailed thinking off<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.needs_torch
def test_generation_is_deterministic_from_the_seed(tmp_path):
    from build import tiny_checkpoint as generator

    a = generator.write(tmp_path / "a", seed=3)
    b = generator.write(tmp_path / "b", seed=3)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_wrong_checkpoint_is_refused_clearly(tmp_path):
    with pytest.raises(ServerError, match="no config.json"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ServerError, match="Llama_Nemotron_Nano_VL"):
        load_config(tmp_path)


def test_a_template_kept_in_its_own_file_reaches_an_older_loader(tiny_checkpoint, monkeypatch):
    """transformers < 4.47 (TensorRT-LLM 0.14's container) reads no chat_template.jinja: load_tokenizer does."""
    from transformers import PreTrainedTokenizerFast

    from nanovl.core.checkpoint import load_config, load_tokenizer

    loader = PreTrainedTokenizerFast.from_pretrained.__func__

    def older(cls, *args, **kwargs):
        tokenizer = loader(cls, *args, **kwargs)
        tokenizer.chat_template = None
        return tokenizer

    monkeypatch.setattr(PreTrainedTokenizerFast, "from_pretrained", classmethod(older))
    tokenizer = load_tokenizer(load_config(tiny_checkpoint))
    assert tokenizer.chat_template == (tiny_checkpoint / "chat_template.jinja").read_text()
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\ndetailed thinking off")


def real_shape_config(**vision_args) -> dict:
    """config.json laid out as the real checkpoint's (MODEL-FACTS 1-2): geometry only, no weights."""
    teachers = [{"name": n, "use_summary": True} for n in ("clip", "siglip", "dino_v2", "sam")]
    args = {"model": "vit_huge_patch16_224", "cpe_max_size": 2048, "cls_token_per_teacher": True,
            "register_multiple": 8, "teachers": teachers, "dtype": "bfloat16", **vision_args}
    return {
        "architectures": ["Llama_Nemotron_Nano_VL"], "model_type": "Llama_Nemotron_Nano_VL",
        "auto_map": {"AutoConfig": "configuration.Llama_Nemotron_Nano_VL_Config",
                     "AutoModel": "modeling.Llama_Nemotron_Nano_VL"},
        "force_image_size": 512, "patch_size": 16, "downsample_ratio": 0.5, "ps_version": "v2",
        "image_tag_type": "internvl", "template": "llama-3.1-nemotron-nano-vl", "vit_hidden_size": 1280,
        "projector_hidden_size": 4096, "torch_dtype": "bfloat16",
        "llm_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128512,
                       "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                       "rope_theta": 500000.0, "bos_token_id": 128000, "pad_token_id": None},
        "vision_config": {"architectures": ["RADIOModel"], "model_type": "radio", "patch_size": 16,
                          "max_resolution": 2048, "auto_map": {"AutoConfig": "nvidia/C-RADIOv2-H--hf_model.RADIOConfig",
                                                               "AutoModel": "nvidia/C-RADIOv2-H--hf_model.RADIOModel"},
                          "args": {k: v for k, v in args.items() if v is not None}},
    }


@pytest.fixture
def real_shape(tmp_path, tiny_checkpoint):
    """A checkpoint directory of the real shape: no generation_config.json, no eos in config.json, a tokenizer
    (the tiny one's: Llama 3.1's) whose config has a null pad token."""
    tokenizer_config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "pad_token": None}))
    for name in ("tokenizer.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_checkpoint / name).read_bytes())

    def write(config: dict):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return load_config(tmp_path)
    return write


def test_a_config_of_the_real_shape_reads_as_the_real_model(real_shape):
    from nanovl.core.checkpoint import VisionSpec, load_tokenizer

    config = real_shape(real_shape_config())
    assert config.vision == VisionSpec(1280, 32, 16, 5120, 16, 2048, 4, 4)
    assert (config.image_size, config.tokens_per_tile, config.ps_version, config.torch_dtype) == (512, 256, "v2",
                                                                                                    "bfloat16")
    assert (config.vocab_size, config.llm_hidden_size, config.max_context) == (128512, 4096, 16384)
    assert config.eos_token_ids == (128009,)   # neither generation_config.json nor config.json names one
    assert load_tokenizer(config).pad_token is None


def test_radio_args_defaults_and_explicit_registers(real_shape):
    # RADIO's default model is ViT-H/16; cpe_num_registers, when set, wins over register_multiple (its ClsToken).
    assert real_shape(real_shape_config(model=None)).vision.hidden_size == 1280
    assert real_shape(real_shape_config(cpe_num_registers=6)).vision.num_registers == 6
    assert real_shape(real_shape_config(register_multiple=None)).vision.num_registers == 0
    with pytest.raises(ServerError, match="not a known ViT"):
        real_shape(real_shape_config(model="vit_giant_patch14_224"))


def test_no_eos_anywhere_is_refused(real_shape, tmp_path):
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "eos_token": None}))
    with pytest.raises(ServerError, match="no eos token"):
        real_shape(real_shape_config())
