"""make bench-engine: generated tokens/s of our reference engine against transformers' own continuous
batching (generate_batch), same checkpoint, same prompts, same token counts, side by side in one run.

    python -m bench.engine [--checkpoint DIR] [--tokens 64] [--concurrency 1 8 32]
"""
from __future__ import annotations

import argparse
import queue
import time
from pathlib import Path

import numpy as np
import torch

from nanovl.core.checkpoint import load_config, load_llm, load_tokenizer
from nanovl.engine.reference import ReferenceEngine
from nanovl.engine.factory import EngineSettings
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.runner import ModelRunner

ROOT = Path(__file__).resolve().parent.parent


def prompts(tokenizer, n: int) -> list[list[int]]:
    texts = [f"Request {i}: describe picture number {i} with its colours, shapes and text. " * (1 + i % 4)
             for i in range(n)]
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False).input_ids
            for t in texts]


def run_ours(engine: ReferenceEngine, outputs: queue.SimpleQueue, batch: list[list[int]], tokens: int):
    before = (engine.stats.steps, engine.stats.forward_s, engine.stats.step_s)
    started = time.perf_counter()
    # No stop tokens: every request makes exactly `tokens` tokens, as the transformers run does.
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    for i, ids in enumerate(batch):
        engine.submit(GenerationRequest(str(i), np.asarray(ids, np.int32), params))
    produced, finished = 0, 0
    while finished < len(batch):
        out = outputs.get(timeout=600)
        produced += len(out.token_ids)
        finished += out.finished
    elapsed = time.perf_counter() - started
    steps = engine.stats.steps - before[0]
    overhead = (engine.stats.step_s - before[2]) - (engine.stats.forward_s - before[1])
    return produced / elapsed, steps, overhead / max(steps, 1)


def run_transformers(model, batch: list[list[int]], tokens: int):
    """transformers' continuous batching; its manager (and KV cache) is built by a first, untimed call and
    kept, so that only generation is timed, as for our already running engine."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate_batch(batch, generation_config=config, progress_bar=False, warmup=False, persistent_manager=True)
    started = time.perf_counter()
    results = model.generate_batch(batch, generation_config=config, progress_bar=False, warmup=False,
                                   persistent_manager=True)
    elapsed = time.perf_counter() - started
    model.destroy_cached_continuous_batching_manager()
    produced = sum(len(r.generated_tokens) for r in results.values())
    return produced / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=EngineSettings.torch_threads, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.checkpoint)
    tokenizer = load_tokenizer(config)
    outputs: queue.SimpleQueue = queue.SimpleQueue()
    engine = ReferenceEngine(ModelRunner(config, kv_cache_tokens=262144), outputs.put,
                             max_running=max(args.concurrency)).start()
    hf = load_llm(config)
    print(f"checkpoint {args.checkpoint}, {args.tokens} tokens per request, greedy, torch threads "
          f"{torch.get_num_threads()}")
    run_ours(engine, outputs, prompts(tokenizer, 2), 4)          # warm-up
    print(f"{'clients':>8} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6} {'steps':>6} "
          f"{'loop overhead/step':>19}")
    single = None
    for n in args.concurrency:
        batch = prompts(tokenizer, n)
        ours, steps, overhead = run_ours(engine, outputs, batch, args.tokens)
        theirs = run_transformers(hf, batch, args.tokens)
        single = single or ours
        print(f"{n:>8} {ours:>11.0f} {theirs:>19.0f} {ours / theirs:>5.2f}x {steps:>6} {overhead * 1e3:>16.2f} ms")
    print(f"our throughput at {args.concurrency[-1]} clients = {ours / single:.1f}x our throughput at "
          f"{args.concurrency[0]}")
    engine.shutdown()


if __name__ == "__main__":
    main()
