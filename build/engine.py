"""`make engine`: a checkpoint of the real format -> TensorRT-LLM engine + a filled-in model repository.

    python -m build.engine --checkpoint DIR --out DIR [--dry-run] [--dtype bfloat16|fp8|nvfp4]
                           [--kv-cache-dtype auto|fp8|bfloat16] [--max-batch 8] [--tp 1] [--max-num-tokens 8192]
                           [--vision tensorrt|pytorch] [--trtllm-examples DIR]

Steps (each printed as the command it runs; --dry-run runs only the first, which needs no GPU):
  1. validate the checkpoint and write OUT/llama_hf: `language_model.*` as a plain Llama checkpoint
     (config.json from llm_config, weights shard by shard with the prefix stripped, tokenizer files)
  2. convert it with TensorRT-LLM's Llama tooling (convert_checkpoint.py; quantize.py, ModelOpt, for fp8, nvfp4
     or an FP8 KV cache)
  3. trtllm-build with what multimodal serving needs: a prompt-embedding table for max_batch x images x 13
     tiles x 256 rows, paged KV cache of 64-token blocks, paged context FMHA (chunked context and KV-cache
     reuse), float32 logits (what a logit bias is added to), 16K context
  4. (--vision tensorrt, the default) export the vision encoder (RADIO + pixel shuffle + mlp1; float pixels in)
     to ONNX with a dynamic tile batch and check it against PyTorch with onnxruntime, then
  5. build it as a TensorRT engine (bf16, 1..max tiles, tuned for one 13-tile image)
  6. write OUT/model_repository with engine=tensorrt_llm, the vision engine, and the engines' paths and sizes

The vision encoder is a TensorRT engine by default because NVIDIA's TensorRT-LLM container pins a transformers
older than the 5.x whose RadioModel the PyTorch encoder uses; the export runs in an environment of its own
(--export-python, $NANOVL_EXPORT_PYTHON; the Dockerfile makes one). --vision pytorch keeps the PyTorch encoder
(bf16, CUDA) where transformers >= 5.13 is installed. Whether TensorRT beats PyTorch here is not measured yet
(`make bench-gpu` measures PyTorch against the device's peak).
Flags read in TensorRT-LLM 1.2's sources (tensorrt_llm/commands/build.py, plugin/plugin.py's pydantic PluginConfig,
examples/models/core/llama/convert_checkpoint.py -- the one that warns of the engine flow's deprecation --,
examples/quantization/quantize.py) and checked by the tests' stand-ins for the three tools
(tests/fake_trtllm_tools.py), which take only those flags and their choices. 1.2.1 is the last release whose
`trtllm-build` and C++ Executor serve this design (docs/gpu.md). Not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nanovl.core.checkpoint import CheckpointConfig, load_config
from nanovl.core.errors import ServerError
from nanovl.core.preprocess import PreprocessSettings
from nanovl.core.vision_export import max_call_tiles

ROOT = Path(__file__).resolve().parent.parent

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")
DTYPES = ("bfloat16", "fp8", "nvfp4")
# auto: the KV cache in bf16 for bfloat16 weights, in FP8 for fp8 and nvfp4 ones (as NVIDIA's quantization
# examples pair them); fp8 or bfloat16 choose it whatever the weights.
KV_CACHE_DTYPES = ("auto", "fp8", "bfloat16")
# The oldest GPU whose tensor cores run a format (major, minor compute capability): FP8 from Ada and Hopper
# (8.9, 9.0), NVFP4 from Blackwell (10.0; RTX 50 is 12.0).
MIN_CAPABILITY = {"fp8": (8, 9), "nvfp4": (10, 0)}
DEFAULT_EXAMPLES = os.environ.get("TRTLLM_EXAMPLES", "/opt/tensorrt_llm/examples")
# Chunked context cuts a prompt into whole KV blocks (trtllm-build's --tokens_per_block, 32 unless set; we set
# 64): a step budget that is a multiple of it wastes none (trtllm-build itself does not ask for one); 8192 tokens
# per step keeps a 16K prompt to two chunks. KV-cache reuse also goes by whole blocks.
KV_BLOCK_TOKENS = 64
DEFAULT_MAX_NUM_TOKENS = 8192
DEFAULT_MAX_BATCH = 8
VISION_ENGINES = ("tensorrt", "pytorch")
DEFAULT_PREPROCESSING_INSTANCES = 8
# TensorRT tunes the vision engine for one 13-tile image; its largest call is vision_export.max_call_tiles().
OPT_VISION_TILES = 13


@dataclass(frozen=True)
class Command:
    step: str
    argv: list[str]

    def shell(self) -> str:
        return shlex.join(self.argv)


class CheckpointError(Exception):
    """The checkpoint is not one `make engine` can build from; the message says why."""


def validate(checkpoint: Path) -> CheckpointConfig:
    try:
        config = load_config(checkpoint)
    except ServerError as exc:
        raise CheckpointError(str(exc)) from exc
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if k not in config.llm_config]
    if missing:
        raise CheckpointError(f"{checkpoint}/config.json: llm_config lacks {missing}")
    llm_type = config.llm_config.get("model_type", "llama")
    if llm_type != "llama":   # TensorRT-LLM's Llama tooling is what converts it
        raise CheckpointError(f"{checkpoint}/config.json: llm_config.model_type is {llm_type!r}, not 'llama'")
    if not (checkpoint / "tokenizer.json").is_file():
        raise CheckpointError(f"{checkpoint}: no tokenizer.json")
    if not any(k.startswith("language_model.") for keys in _weight_keys(checkpoint).values() for k in keys):
        raise CheckpointError(f"{checkpoint}: no language_model.* weights in its safetensors files")
    return config


def _weight_keys(checkpoint: Path) -> dict[Path, list[str]]:
    """Tensor names per safetensors file, without reading a tensor."""
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{checkpoint}: no *.safetensors weights")
    keys = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            keys[file] = list(handle.keys())
    return keys


def write_llama_checkpoint(config: CheckpointConfig, out: Path) -> Path:
    """`language_model.*` -> a Hugging Face LlamaForCausalLM checkpoint in `out`, one source shard in memory
    at a time (the real 8B checkpoint is ~16 GB)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    prefix = "language_model."
    weight_map: dict[str, str] = {}
    shards = [(f, keys) for f, keys in _weight_keys(config.path).items() if any(k.startswith(prefix) for k in keys)]
    for index, (file, keys) in enumerate(shards, 1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        with safe_open(file, framework="pt") as handle:
            tensors = {k[len(prefix):]: handle.get_tensor(k) for k in keys if k.startswith(prefix)}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        del tensors
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                     indent=2))
    llm = dict(config.llm_config)
    llm.update(architectures=["LlamaForCausalLM"], model_type="llama")
    llm.setdefault("torch_dtype", config.torch_dtype)
    llm.setdefault("tie_word_embeddings", False)
    (out / "config.json").write_text(json.dumps(llm, indent=2))
    for name in TOKENIZER_FILES:
        if (config.path / name).is_file():
            shutil.copy2(config.path / name, out / name)
    return out


def _example(examples: Path, script: str) -> str:
    """A TensorRT-LLM example script: examples/<script> in 0.14, examples/models/core/<script> later."""
    for candidate in (examples / script, examples / "models" / "core" / script):
        if candidate.is_file():
            return str(candidate)
    return str(examples / script)


def prompt_table_rows(config: CheckpointConfig, max_batch: int) -> int:
    """Rows of the prompt-embedding table: every sequence of a full batch with its most images of the most
    tiles (the thumbnail included) -- TensorRT-LLM's multimodal rule, max_batch x features x images."""
    limits = PreprocessSettings()
    return max_batch * limits.max_images * (limits.max_tiles + 1) * config.tokens_per_tile


def vision_plan(config: CheckpointConfig, args: argparse.Namespace, py: str) -> tuple[list[Command], list[str]]:
    """-> (commands that build the vision engine, the repository parameters that select it)."""
    if args.vision == "pytorch":
        return [], ["--param", "vision_engine=pytorch"]
    vision_dir = args.out.resolve() / "engines" / "vision"
    onnx_file, plan_file = vision_dir / "vision.onnx", vision_dir / "vision.plan"
    common = ["-m", "nanovl.core.vision_export", "--checkpoint", str(config.path.resolve()), "--onnx", str(onnx_file),
              "--max-tiles", str(max_call_tiles())]
    export_py = args.export_python or py
    return [Command("export the vision encoder to ONNX (dynamic tile batch), check it against PyTorch",
                    [export_py, *common, "--export", "--check"]),
            Command("build the vision TensorRT engine (bf16)",
                    [py, *common, "--opt-tiles", str(OPT_VISION_TILES), "--tensorrt", str(plan_file)])], \
        ["--param", "vision_engine=tensorrt", "--param", f"vision_engine_path={plan_file}"]


def kv_cache_dtype(args: argparse.Namespace) -> str:
    """The KV cache's dtype the build makes: "fp8" or "bfloat16"."""
    if args.kv_cache_dtype == "auto":
        return "bfloat16" if args.dtype == "bfloat16" else "fp8"
    return args.kv_cache_dtype


def convert_step(args: argparse.Namespace, py: str, hf_dir: Path, ckpt_dir: Path) -> Command:
    """The Llama checkpoint -> TensorRT-LLM's: quantize.py (ModelOpt calibration) when weights or KV cache are
    quantized, convert_checkpoint.py otherwise."""
    examples, tp, kv = Path(args.trtllm_examples), str(args.tp), kv_cache_dtype(args)
    if args.dtype == "bfloat16" and kv == "bfloat16":
        return Command("convert the Llama checkpoint to TensorRT-LLM's format", [
            py, _example(examples, "llama/convert_checkpoint.py"), "--model_dir", str(hf_dir),
            "--output_dir", str(ckpt_dir), "--dtype", "bfloat16", "--tp_size", tp, "--workers", tp])
    qformat = {"bfloat16": "full_prec"}.get(args.dtype, args.dtype)
    return Command(f"quantize the Llama checkpoint (ModelOpt calibration): weights {args.dtype}, KV cache {kv}", [
        py, _example(examples, "quantization/quantize.py"), "--model_dir", str(hf_dir), "--dtype", "bfloat16",
        "--qformat", qformat, *(["--kv_cache_dtype", "fp8"] if kv == "fp8" else []),
        "--calib_size", str(args.calib_size), *(["--calib_dataset", args.calib_dataset] if args.calib_dataset else []),
        "--tp_size", tp, "--output_dir", str(ckpt_dir)])


def plan(config: CheckpointConfig, args: argparse.Namespace) -> list[Command]:
    out, py = args.out.resolve(), sys.executable if args.python is None else args.python
    hf_dir, ckpt_dir, engine_dir = out / "llama_hf", out / "trtllm_checkpoint", out / "engines" / "llm"
    # A prompt leaves room for at least one generated token (nanovl.engine.request.sampling_params).
    build = ["trtllm-build", "--checkpoint_dir", str(ckpt_dir), "--output_dir", str(engine_dir),
             "--max_batch_size", str(args.max_batch), "--max_input_len", str(config.max_context - 1),
             "--max_seq_len", str(config.max_context),
             "--max_num_tokens", str(args.max_num_tokens),
             "--max_prompt_embedding_table_size", str(prompt_table_rows(config, args.max_batch)),
             "--kv_cache_type", "paged", "--tokens_per_block", str(KV_BLOCK_TOKENS),
             "--use_paged_context_fmha", "enable", "--remove_input_padding", "enable",
             "--context_fmha", "enable", "--gpt_attention_plugin", "auto", "--gemm_plugin", "auto",
             # The Executor adds a request's embedding bias (logit_bias) to logits of this dtype.
             "--logits_dtype", "float32", "--workers", str(args.tp)]
    # FP8 context attention reads an FP8 KV cache; with a bf16 one it must be off (1.2 turns it on by default).
    build += ["--use_fp8_context_fmha", "enable" if kv_cache_dtype(args) == "fp8" else "disable"]
    vision, vision_params = vision_plan(config, args, py)
    repository = Command("write the model repository for the engines", [
        py, "-m", "nanovl.serving.triton_config", str(out / "model_repository"), "--checkpoint", str(config.path.resolve()),
        "--param", "engine=tensorrt_llm", "--param", f"engine_dir={engine_dir}", "--param", "device=cuda",
        "--param", "dtype=bfloat16", "--param", f"max_running={args.max_batch}",
        "--param", f"max_step_tokens={args.max_num_tokens}",
        "--param", f"kv_cache_free_gpu_memory_fraction={args.kv_cache_fraction}",
        "--param", "enable_chunked_context=true", *vision_params,
        "--instances", f"preprocessing={args.preprocessing_instances}"])
    return [convert_step(args, py, hf_dir, ckpt_dir), Command("build the LLM engine", build), *vision, repository]


def gpu_capability() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of the first GPU nvidia-smi sees, or None where there is none."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
        name, cap = (part.strip() for part in line.rsplit(",", 1))
        major, minor = cap.split(".")
        return name, (int(major), int(minor))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def capability_refusal(args: argparse.Namespace, gpu: tuple[str, tuple[int, int]] | None) -> str | None:
    """Why this GPU cannot run the formats asked for, or None (also when no GPU is seen: the tools then fail
    with their own errors, and the stand-ins of the tests need none)."""
    formats = {args.dtype, kv_cache_dtype(args)} & set(MIN_CAPABILITY)
    if gpu is None:
        return None
    name, have = gpu
    for fmt in sorted(formats, key=lambda f: MIN_CAPABILITY[f], reverse=True):
        need = MIN_CAPABILITY[fmt]
        if have < need:
            what = "DTYPE=nvfp4 needs a Blackwell GPU" if fmt == "nvfp4" else f"{fmt.upper()} needs an Ada or Hopper GPU"
            return (f"{what} (compute capability {need[0]}.{need[1]} or newer); {name} is {have[0]}.{have[1]}: "
                    f"use {'DTYPE=fp8 or ' if fmt == 'nvfp4' else ''}DTYPE=bfloat16"
                    f"{' with KV_CACHE_DTYPE=bfloat16' if fmt == 'fp8' else ''}")
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build TensorRT-LLM engines and a model repository")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory of the real format")
    parser.add_argument("--out", type=Path, required=True, help="where llama_hf/, engines/, model_repository/ go")
    parser.add_argument("--dry-run", action="store_true", help="validate, write llama_hf/, print the rest")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the LLM's weights (nvfp4: Blackwell)")
    parser.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto",
                        help="the KV cache (auto: bf16 for bfloat16 weights, fp8 for quantized ones)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="sequences in flight per GPU")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs")
    parser.add_argument("--max-num-tokens", type=int, default=DEFAULT_MAX_NUM_TOKENS, help="tokens per step")
    # Of the GPU memory free when the Executor starts. Triton loads the stages in no set order: if the vision
    # engine comes second it has the other 20 % (ViT-H activations for 52 tiles, its largest call).
    parser.add_argument("--kv-cache-fraction", type=float, default=0.8, help="free GPU memory for the KV cache")
    parser.add_argument("--calib-size", type=int, default=512, help="fp8/nvfp4 calibration samples")
    parser.add_argument("--calib-dataset", default=None,
                        help="fp8/nvfp4: a local calibration dataset, a directory that datasets.load_dataset reads with "
                             "a train split and a 'text' column (default: quantize.py's, fetched from the Hub)")
    parser.add_argument("--vision", choices=VISION_ENGINES, default="tensorrt", help="the vision encoder's engine")
    # Fetching, decoding and tiling run on the CPU, ~20 1080p images/s an instance (docs/perf.md); a GPU encodes
    # far more, and GPU hosts have the cores.
    parser.add_argument("--preprocessing-instances", type=int, default=DEFAULT_PREPROCESSING_INSTANCES,
                        help="preprocessing stage instances (image fetch, decode, tiling)")
    parser.add_argument("--export-python", default=os.environ.get("NANOVL_EXPORT_PYTHON"),
                        help="interpreter with transformers >= 5.13 for the vision export (default: --python)")
    parser.add_argument("--trtllm-examples", default=DEFAULT_EXAMPLES, help="TensorRT-LLM's examples folder")
    parser.add_argument("--python", default=None, help="interpreter for the steps (default: this one)")
    args = parser.parse_args(argv)
    for name in ("max_batch", "tp", "max_num_tokens", "preprocessing_instances"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_num_tokens % KV_BLOCK_TOKENS:
        parser.error(f"--max-num-tokens must be a multiple of {KV_BLOCK_TOKENS}, the KV block size chunked context cuts by")
    if args.calib_dataset and "cnn_dailymail" in args.calib_dataset:
        # quantize.py checks for that name before it looks for a directory, and fetches the Hub's.
        parser.error("--calib-dataset: quantize.py takes any path holding 'cnn_dailymail' for the Hub's "
                     "dataset; rename the directory")
    return args


# The first transformers with RadioModel (nanovl.core.vision); pyproject's floor.
RADIO_TRANSFORMERS = (5, 13)


def transformers_version() -> tuple[int, int] | None:
    """This interpreter's transformers (major, minor) (the one that serves the engines), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = version("transformers").split(".")[:2]
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = transformers_version() if args.vision == "pytorch" else None
    if args.vision == "pytorch" and (found or (0, 0)) < RADIO_TRANSFORMERS:
        # The stages serve under this Python (TensorRT-LLM's); the PyTorch encoder needs RadioModel.
        have = ".".join(map(str, found)) if found else "none"
        print("make engine: VISION=pytorch needs transformers >= 5.13 (RadioModel) in the Python that serves the "
              f"TensorRT-LLM engine; this one has {have}: use VISION=tensorrt", file=sys.stderr)
        return 2
    if args.calib_dataset and not args.dry_run and not Path(args.calib_dataset).is_dir():
        # quantize.py reads a local dataset only from a directory; anything else fails after the conversion.
        print(f"make engine: --calib-dataset {args.calib_dataset} is not a directory (datasets.load_dataset "
              "reads it: a train split with a 'text' column)", file=sys.stderr)
        return 2
    refused = None if args.dry_run else capability_refusal(args, gpu_capability())
    if refused:
        print(f"make engine: {refused}", file=sys.stderr)
        return 2
    try:
        config = validate(args.checkpoint)
    except CheckpointError as exc:
        print(f"make engine: wrong checkpoint: {exc}", file=sys.stderr)
        return 2
    hf_dir = args.out.resolve() / "llama_hf"
    print(f"# 1. split language_model.* into a Llama checkpoint: {hf_dir}")
    write_llama_checkpoint(config, hf_dir)
    if args.vision == "pytorch":
        print("# vision encoder: kept in PyTorch (vision_encoder stage, device=cuda, bfloat16); no TensorRT engine")
    for number, command in enumerate(plan(config, args), 2):
        print(f"# {number}. {command.step}\n{command.shell()}", flush=True)
        if args.dry_run:
            continue
        # Our steps are `python -m nanovl...` run from ROOT, which finds the package without PYTHONPATH; with it,
        # this `build` package would shadow PyPI's in TensorRT-LLM's scripts.
        result = subprocess.run(command.argv, cwd=ROOT)
        if result.returncode != 0:
            print(f"make engine: step {number} failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
    if args.dry_run:
        print("# dry run: only step 1 ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
