"""make bench-gpu: the GPU-capable parts at the real model's size with random weights, against the hardware.

    python -m bench.gpu [--geometry real|small] [--device cuda] [--workdir DIR] [--json FILE] [--parts ...]

Writes a random-weight checkpoint of the real format at the real geometry (bench.random_checkpoint:
Llama-3.1-8B + C-RADIOv2-H + mlp1, bf16, ~17 GB on disk), loads it through the same loaders the stages use,
and measures in one run:
  peak       what this device does: a large bf16 matmul (TFLOP/s) and a device copy (GB/s)
  vision     tiles/s of the vision encoder (RADIO -> pixel shuffle -> mlp1) at 1, 13 and 52 tiles a batch,
             as TFLOP/s against the measured matmul peak
  prefill    prompt tokens/s of the reference engine, as TFLOP/s against the same peak
  decode     generated tokens/s of the reference engine at several concurrencies, as the bytes a step must
             read (weights + KV cache) against the measured copy bandwidth, and side by side with
             transformers' generate on the same weights
Every part runs on its own: one that fails prints its error and the others still run. `--geometry small`
runs the same code at toy sizes (the test suite does, on CPU).
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.random_checkpoint import GEOMETRIES, Geometry, write_config, write_weights
from nanovl.core.checkpoint import CheckpointConfig, load_config
from nanovl.core.vision import load_vision
from nanovl.engine.reference import ReferenceEngine
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.runner import ModelRunner

PARTS = ("peak", "vision", "prefill", "decode")


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, fn, repeats: int) -> float:
        """Mean seconds of fn() over `repeats` runs after one warm-up."""
        fn()
        self.sync()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        self.sync()
        return (time.perf_counter() - started) / repeats


def bench_peak(geometry: Geometry, device: torch.device, timer: Timer) -> dict:
    n = geometry.matmul
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_s = timer.seconds(lambda: a @ b, geometry.repeats["matmul"])
    src = torch.empty(geometry.copy_bytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_s = timer.seconds(lambda: dst.copy_(src), geometry.repeats["copy"])
    # A copy reads and writes every byte.
    return {"matmul_tflops": 2 * n ** 3 / matmul_s / 1e12, "copy_gbps": 2 * geometry.copy_bytes / copy_s / 1e9}


def vision_flops_per_tile(config: CheckpointConfig) -> float:
    v = config.vision
    side = config.image_size // config.patch_size
    patches = side * side
    seq = patches + v.num_cls_tokens + v.num_registers
    d = v.hidden_size
    per_layer = 2 * seq * (4 * d * d + 2 * d * v.mlp_dim) + 4 * seq * seq * d   # projections, MLP, QK^T and AV
    merged = int(config.vit_hidden_size / config.downsample_ratio ** 2)
    projector = 2 * config.tokens_per_tile * (merged * config.projector_hidden_size
                                              + config.projector_hidden_size * config.llm_hidden_size)
    return 2 * patches * 3 * config.patch_size ** 2 * d + v.num_layers * per_layer + projector


def bench_vision(config: CheckpointConfig, geometry: Geometry, device: torch.device, timer: Timer,
                 peak: dict) -> list[dict]:
    encoder = load_vision(config, dtype="bfloat16", device=str(device))
    flops = vision_flops_per_tile(config)
    rows = []
    for n in geometry.tile_batches:
        tiles = torch.randint(0, 256, (n, config.image_size, config.image_size, 3), dtype=torch.uint8, device=device)
        seconds = timer.seconds(lambda: encoder(tiles), geometry.repeats["vision"])
        tflops = n * flops / seconds / 1e12
        rows.append({"tiles": n, "tiles_per_s": n / seconds, "tflops": tflops,
                     "of_peak": tflops / peak["matmul_tflops"] if peak else None})
    return rows   # the encoder goes with this frame, before the LLM part loads


# Sampling as chat clients send it, with every per-request setting that costs work on the host.
SAMPLED = dict(temperature=0.8, top_p=0.95, top_k=50, seed=7, repetition_penalty=1.1, presence_penalty=0.5)


def _run(engine: ReferenceEngine, outputs: queue.SimpleQueue, prompts: list[np.ndarray], tokens: int,
         tables: list | None = None, sampling: dict | None = None):
    """Submits every prompt at once -> (seconds until every request had its first token, seconds to the end)."""
    # No stop tokens: random weights may pick an eos at any time, and every request must make `tokens`.
    params = SamplingParams(max_tokens=tokens, **(sampling or {"temperature": 0.0}))
    started = time.perf_counter()
    for i, ids in enumerate(prompts):
        engine.submit(GenerationRequest(f"r{i}", ids, params, tables[i] if tables else None))
    first, finished, first_done = set(), 0, None
    while finished < len(prompts):
        out = outputs.get(timeout=120)   # a hang must not eat a GPU session's whole time
        if out.error:
            raise RuntimeError(f"engine error: {out.error}")
        first.add(out.request_id)
        if first_done is None and len(first) == len(prompts):
            first_done = time.perf_counter() - started
        if out.finished:
            finished += 1
            if out.completion_tokens != tokens:   # the figures count on every request making all its tokens
                raise RuntimeError(f"{out.request_id} made {out.completion_tokens} tokens, not {tokens}")
    return first_done, time.perf_counter() - started


def _prompts(rng: np.random.Generator, n: int, length: int) -> list[np.ndarray]:
    # Ordinary token ids below the specials: no image rows, no template needed for throughput.
    return [rng.integers(0, 1000, length, dtype=np.int32) for _ in range(n)]


def llm_params(runner: ModelRunner) -> tuple[int, int, int]:
    """(parameters every token's forward multiplies with, those of lm_head, which only a sequence's last token
    meets, parameter bytes a decode step reads)."""
    model = runner.model
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel()   # a lookup: read a row per token, no matmul
    head = model.lm_head.weight.numel()
    return total - embedding - head, head, (total - embedding) * model.lm_head.weight.element_size()


def bench_llm(config: CheckpointConfig, geometry: Geometry, device: torch.device, peak: dict,
              parts: set[str], result: dict, emit) -> None:
    """Fills `result` part by part, calling emit() after each, so a later failure keeps the earlier figures."""
    prompt_len, prompts = geometry.prefill
    kv_tokens = max(prompt_len * prompts, prompts * (13 * config.tokens_per_tile + 32),
                    max(geometry.concurrency) * (geometry.decode_prompt + geometry.decode_tokens))
    runner = ModelRunner(config, kv_cache_tokens=kv_tokens + 1024, dtype="bfloat16", device=str(device))
    outputs: queue.SimpleQueue = queue.SimpleQueue()
    engine = ReferenceEngine(runner, outputs.put, max_running=max(geometry.concurrency, default=1),
                             max_step_tokens=8192).start()
    rng = np.random.default_rng(0)
    body_params, head_params, weight_bytes = llm_params(runner)
    llm = runner.model.config
    kv_bytes_per_token = 2 * llm.num_hidden_layers * runner.num_kv_heads * runner.head_dim * 2
    result["parameters_b"] = (body_params + head_params) / 1e9
    try:
        _run(engine, outputs, _prompts(rng, 2, 16), 2)   # warm-up
        if "prefill" in parts:
            batch = _prompts(rng, prompts, prompt_len)
            _run(engine, outputs, batch, 1)   # untimed: the kernels of these shapes are loaded and chosen here
            _, seconds = _run(engine, outputs, batch, 1)
            tokens = prompt_len * prompts
            # QK^T and AV over a causal half of prompt_len^2, every head of every layer.
            width = llm.num_attention_heads * runner.head_dim
            attention = 2 * llm.num_hidden_layers * prompts * prompt_len ** 2 * width
            tflops = (2 * body_params * tokens + 2 * head_params * prompts + attention) / seconds / 1e12
            result["prefill"] = {"prompts": prompts, "prompt_tokens": prompt_len, "tokens_per_s": tokens / seconds,
                                 "tflops": tflops, "of_peak": tflops / peak["matmul_tflops"] if peak else None}
            emit()
            result["image_prefill"] = _image_prefill(engine, outputs, config, rng, prompts)
            emit()
        if "decode" in parts:
            result["decode"] = []
            for n in geometry.concurrency:
                result["decode"].append(_decode(engine, outputs, runner, geometry, rng, n, weight_bytes,
                                                kv_bytes_per_token, peak))
                emit()
            # Host-side sampling over the whole vocabulary is the slow part: half the tokens do.
            n, tokens = max(geometry.concurrency), max(2, geometry.decode_tokens // 2)
            first, total = _run(engine, outputs, _prompts(rng, n, geometry.decode_prompt), tokens, sampling=SAMPLED)
            result["decode_sampled"] = {"concurrency": n, "sampling": SAMPLED,
                                        "tokens_per_s": n * (tokens - 1) / (total - first)}
            emit()
    finally:
        engine.shutdown()


def _image_prefill(engine, outputs, config: CheckpointConfig, rng: np.random.Generator, n: int) -> dict:
    """n prompts of one 13-tile image each (the most an image takes): the prompt-table path, rows >= vocab."""
    rows = 13 * config.tokens_per_tile
    image = np.arange(config.vocab_size, config.vocab_size + rows, dtype=np.int32)
    prompts = [np.concatenate([p[:8], image, p[8:]]) for p in _prompts(rng, n, 24)]
    tables = [rng.standard_normal((rows, config.llm_hidden_size), dtype=np.float32) for _ in range(n)]
    _, seconds = _run(engine, outputs, prompts, 1, tables)
    return {"prompts": n, "prompt_tokens": len(prompts[0]), "tokens_per_s": n * len(prompts[0]) / seconds}


def _decode(engine, outputs, runner, geometry, rng, n, weight_bytes, kv_bytes_per_token, peak) -> dict:
    prompts = _prompts(rng, n, geometry.decode_prompt)
    tokens = geometry.decode_tokens
    first, total = _run(engine, outputs, prompts, tokens)
    ours = n * (tokens - 1) / (total - first)   # the decode phase: after every request had its first token
    # A step reads every weight once and each sequence's KV cache (mean context over the run).
    context = geometry.decode_prompt + tokens / 2
    step_bytes = weight_bytes + n * context * kv_bytes_per_token
    limit = n * peak["copy_gbps"] * 1e9 / step_bytes if peak else None
    return {"concurrency": n, "tokens_per_s": ours, "step_ms": n / ours * 1e3,
            "bandwidth_limit_tokens_per_s": limit, "of_limit": ours / limit if limit else None,
            "transformers_tokens_per_s": _transformers_decode(runner, prompts, tokens)}


def _transformers_decode(runner: ModelRunner, prompts: list[np.ndarray], tokens: int) -> float:
    """transformers' generate on the same weights, the same prompts as one padded batch, decode phase only."""
    ids = torch.tensor(np.stack(prompts), dtype=torch.long, device=runner.device)
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(ids))

    def generate(n):
        started = time.perf_counter()
        out = runner.model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        if out.shape[1] != ids.shape[1] + n:
            raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, not {n}")
        return time.perf_counter() - started

    generate(2)   # warm-up
    prefill = generate(1)
    return len(prompts) * (tokens - 1) / max(generate(tokens) - prefill, 1e-9)


def report(results: dict) -> str:
    lines = [f"device: {results['device']}, geometry {results['geometry']}"]
    if peak := results.get("peak"):
        lines.append(f"peak: bf16 matmul {peak['matmul_tflops']:.3g} TFLOP/s, device copy {peak['copy_gbps']:.3g} GB/s")
    for row in results.get("vision", []):
        lines.append(f"vision: {row['tiles']:>3} tiles/batch {row['tiles_per_s']:>9.1f} tiles/s "
                     f"{row['tflops']:>7.3g} TFLOP/s" + (f" = {row['of_peak']:.0%} of peak" if row["of_peak"] else ""))
    llm = results.get("llm", {})
    if pre := llm.get("prefill"):
        lines.append(f"prefill: {pre['prompts']} x {pre['prompt_tokens']} tokens {pre['tokens_per_s']:>9.0f} tok/s "
                     f"{pre['tflops']:.3g} TFLOP/s" + (f" = {pre['of_peak']:.0%} of peak" if pre["of_peak"] else ""))
    if image := llm.get("image_prefill"):
        lines.append(f"image prefill: {image['prompts']} x {image['prompt_tokens']} tokens (13 tiles each) "
                     f"{image['tokens_per_s']:>9.0f} tok/s")
    for row in llm.get("decode", []):
        limit = f" = {row['of_limit']:.0%} of the bandwidth limit" if row["of_limit"] else ""
        lines.append(f"decode: {row['concurrency']:>3} clients {row['tokens_per_s']:>8.0f} tok/s "
                     f"({row['step_ms']:.1f} ms/step){limit}; transformers generate "
                     f"{row['transformers_tokens_per_s']:.0f} tok/s, ours "
                     f"{row['tokens_per_s'] / row['transformers_tokens_per_s']:.2f}x")
    if sampled := llm.get("decode_sampled"):
        lines.append(f"decode, sampled ({', '.join(f'{k}={v}' for k, v in sampled['sampling'].items())}): "
                     f"{sampled['concurrency']} clients {sampled['tokens_per_s']:.0f} tok/s")
    for part, error in results.get("errors", {}).items():
        lines.append(f"{part}: FAILED: {error.strip().splitlines()[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", choices=GEOMETRIES, default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nanovl-bench-gpu"),
                        help="where the random checkpoint goes (reused when present)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    geometry, device, parts = GEOMETRIES[args.geometry], torch.device(args.device), set(args.parts)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x {torch.get_num_threads()} threads"
    results: dict = {"device": name, "geometry": args.geometry, "torch": torch.__version__, "errors": {}}
    checkpoint = args.workdir / args.geometry
    started = time.perf_counter()
    if (checkpoint / "model.safetensors.index.json").is_file():
        config = load_config(checkpoint)
    else:
        config = write_config(checkpoint, geometry)
        write_weights(config, device)
    results["checkpoint_s"] = time.perf_counter() - started
    timer = Timer(device)
    printed: set[str] = set()

    def emit() -> None:
        """Prints the report lines not printed yet and rewrites the JSON: a run cut short keeps its figures."""
        # By text, not by count: report() puts failures last, so a figure measured after a failure lands above
        # lines already printed (a count reprinted the failure and skipped the figure).
        fresh = [line for line in report(results).splitlines() if line not in printed]
        if fresh:
            print("\n".join(fresh), flush=True)
        printed.update(fresh)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))

    results["llm"] = {}
    steps = [("peak", lambda: results.update(peak=bench_peak(geometry, device, timer))),
             ("vision", lambda: results.update(vision=bench_vision(config, geometry, device, timer,
                                                                  results.get("peak")))),
             ("llm", lambda: bench_llm(config, geometry, device, results.get("peak"), parts, results["llm"], emit))]
    for part, run in steps:
        if part not in parts and not (part == "llm" and parts & {"prefill", "decode"}):
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            run()
        except Exception:   # one broken part must not hide the figures of the others
            results["errors"][part] = traceback.format_exc()
            print(results["errors"][part], file=sys.stderr)
        if device.type == "cuda":
            results.setdefault("max_memory_gb", {})[part] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.empty_cache()
        emit()
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
