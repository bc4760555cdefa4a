"""Stand-ins for TensorRT-LLM 1.2.1's engine tools, strict about their command lines: convert_checkpoint.py
(examples/models/core/llama), quantize.py (examples/quantization) and trtllm-build (tensorrt_llm/commands/build.py
with plugin/plugin.py's PluginConfig flags). Each takes only the flags its argparse defines at that release, with
their choices, and logs its arguments; `python -m tests.fake_trtllm_tools TOOL LOG ARGS...` runs one.

Flags our plan does not use are listed too (those that take a value), so that a typo fails as "unknown" and a
flag from another release fails just the same.
"""
from __future__ import annotations

import sys

ANY = None   # a flag that takes a value of any form
SWITCH = ()  # a store_true flag: no value
ON_OFF = ("enable", "disable")
DTYPE = ("auto", "float16", "bfloat16", "float32")
PLUGIN = ("auto", "float16", "float32", "bfloat16", "int32", "disable")

CONVERT = {
    "model_dir": ANY, "meta_ckpt_dir": ANY, "tp_size": ANY, "pp_size": ANY, "moe_tp_size": ANY, "cp_size": ANY,
    "moe_ep_size": ANY, "dtype": DTYPE, "vocab_size": ANY, "n_positions": ANY, "n_layer": ANY, "n_head": ANY,
    "n_kv_head": ANY, "n_embd": ANY, "inter_size": ANY, "multiple_of": ANY, "ffn_dim_multiplier": ANY,
    "rms_norm_eps": ANY, "use_weight_only": SWITCH, "disable_weight_only_quant_plugin": SWITCH,
    "weight_only_precision": ("int8", "int4", "int8_gptq", "int4_gptq", "int4_awq"), "calib_dataset": ANY,
    "calib_size": ANY, "calib_max_seq_length": ANY, "smoothquant": ANY, "use_qserve": SWITCH, "per_channel": SWITCH,
    "per_token": SWITCH, "int8_kv_cache": SWITCH, "fp8_kv_cache": SWITCH, "quant_ckpt_path": ANY, "use_fp8": SWITCH,
    "use_nvfp4": SWITCH, "use_fp8_rowwise": SWITCH, "use_meta_fp8_rowwise_recipe": SWITCH, "per_group": SWITCH,
    "load_by_shard": SWITCH, "hidden_act": ANY, "rotary_base": ANY, "group_size": ANY, "load_model_on_cpu": SWITCH,
    "use_parallel_embedding": SWITCH, "embedding_sharding_dim": ("0", "1"), "output_dir": ANY, "workers": ANY,
    "moe_num_experts": ANY, "moe_top_k": ANY, "moe_renorm_mode": ANY, "save_config_only": SWITCH,
    "remove_duplicated_kv_heads": SWITCH, "log_level": ANY,
}

QUANTIZE = {
    "model_dir": ANY, "nemo_ckpt_path": ANY, "decoder_type": ("gptnext", "llama"), "device": ("cuda", "cpu"),
    "device_map": ("auto", "sequential", "cpu", "gpu"), "calib_dataset": ANY, "calib_tp_size": ANY,
    "calib_pp_size": ANY, "dtype": DTYPE,
    "qformat": ("nvfp4", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "full_prec"),
    "seed": ANY, "tokenizer_max_seq_length": ANY, "batch_size": ANY, "calib_size": ANY, "calib_max_seq_length": ANY,
    "output_dir": ANY, "tp_size": ANY, "pp_size": ANY, "cp_size": ANY, "awq_block_size": ANY,
    "kv_cache_dtype": ("int8", "fp8"), "quantize_lm_head": SWITCH, "num_medusa_heads": ANY,
    "num_medusa_layers": ANY, "max_draft_len": ANY, "medusa_hidden_act": ANY, "medusa_model_dir": ANY,
    "quant_medusa_head": SWITCH, "autoq_format": ANY, "auto_quantize_bits": ANY,
    "export_format": ("tensorrt_llm", "hf"),
}

BUILD = {
    "checkpoint_dir": ANY, "model_config": ANY, "build_config": ANY, "model_cls_file": ANY, "model_cls_name": ANY,
    "output_dir": ANY, "max_batch_size": ANY, "max_input_len": ANY, "max_seq_len": ANY, "max_decoder_seq_len": ANY,
    "max_beam_width": ANY, "max_num_tokens": ANY, "opt_num_tokens": ANY, "max_encoder_input_len": ANY,
    "max_prompt_embedding_table_size": ANY, "max_multimodal_len": ANY,
    "kv_cache_type": ("continuous", "paged", "disabled"), "paged_kv_cache": ANY, "input_timing_cache": ANY,
    "output_timing_cache": ANY, "profiling_verbosity": ("layer_names_only", "detailed", "none"),
    "strip_plan": SWITCH, "weight_sparsity": SWITCH, "weight_streaming": SWITCH, "fast_build": SWITCH,
    "workers": ANY, "log_level": ANY, "enable_debug_output": SWITCH, "visualize_network": ANY, "dry_run": SWITCH,
    "monitor_memory": SWITCH, "logits_dtype": ("float16", "float32"), "gather_context_logits": SWITCH,
    "gather_generation_logits": SWITCH, "gather_all_token_logits": SWITCH, "lora_dir": ANY,
    "lora_ckpt_source": ("hf", "nemo"), "lora_target_modules": ANY, "max_lora_rank": ANY,
    "speculative_decoding_mode": ("draft_tokens_external", "lookahead_decoding", "medusa", "explicit_draft_tokens",
                                  "eagle"),
    "max_draft_len": ANY, "auto_parallel": ANY, "gpus_per_node": ANY, "cluster_key": ANY,
    # PluginConfig's command-line fields (cli_plugin_args)
    "bert_attention_plugin": PLUGIN, "gpt_attention_plugin": PLUGIN,
    "gemm_plugin": ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable"),
    "gemm_swiglu_plugin": ("fp8", "disable"), "fp8_rowwise_gemm_plugin": PLUGIN, "lora_plugin": PLUGIN,
    "dora_plugin": ON_OFF, "moe_plugin": PLUGIN, "mamba_conv1d_plugin": PLUGIN, "nccl_plugin": PLUGIN,
    "low_latency_gemm_plugin": ("fp8", "disable"), "low_latency_gemm_swiglu_plugin": ("fp8", "disable"),
    "gemm_allreduce_plugin": ("float16", "bfloat16", "disable"), "context_fmha": ON_OFF,
    "bert_context_fmha_fp32_acc": ON_OFF, "remove_input_padding": ON_OFF, "tokens_per_block": ANY,
    "use_paged_context_fmha": ON_OFF, "use_fp8_context_fmha": ON_OFF, "fuse_fp4_quant": ON_OFF,
    "multiple_profiles": ON_OFF, "paged_state": ON_OFF, "streamingllm": ON_OFF, "norm_quant_fusion": ON_OFF,
    "reduce_fusion": ON_OFF, "user_buffer": ON_OFF, "use_fused_mlp": ON_OFF, "pp_reduce_scatter": ON_OFF,
}

TOOLS = {"convert": CONVERT, "quantize": QUANTIZE, "build": BUILD}


def check(flags: dict, argv: list[str]) -> dict[str, str | bool]:
    """argv against a tool's flags -> {flag: value}; SystemExit naming the first wrong flag or value."""
    parsed, rest = {}, list(argv)
    while rest:
        token = rest.pop(0)
        name = token[2:] if token.startswith("--") else None
        if name not in flags:
            raise SystemExit(f"unrecognized argument {token!r} (not a flag of TensorRT-LLM 1.2.1's tool)")
        choices = flags[name]
        if choices == SWITCH:
            parsed[name] = True
            continue
        if not rest:
            raise SystemExit(f"--{name} expects a value")
        value = rest.pop(0)
        if choices is not ANY and value not in choices:
            raise SystemExit(f"--{name}: invalid choice {value!r} (choose from {', '.join(choices)})")
        parsed[name] = value
    return parsed


def main(argv: list[str]) -> int:
    tool, log, *args = argv
    check(TOOLS[tool], args)
    with open(log, "a") as handle:
        handle.write(" ".join([tool, *args]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
