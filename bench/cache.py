"""make bench-cache: what the caches save, side by side in one run on one stack (caches on, the defaults).

    python -m bench.cache [--checkpoint DIR] [--conversations 1 8] [--tokens 8]

1. NIM's documented multi-turn shape: a 13-tile image and a question, then two follow-ups that send the whole
   conversation (the image included) again. Each conversation has its own image; `--conversations` of them run
   at once. Printed: median time to first token of turns 2 and 3 against turn 1 (the prefix cache serves the
   image's 3,330 prompt positions and the earlier turns; the embedding cache the encoder's forward; preprocessing
   skips decoding and tiling). The conversations move in lockstep: each turn runs at the same concurrency.
2. 16 clients at once, each a ~2,000-token system prompt and its own question: the same system prompt for all
   (warmed by one request first, as a deployment is in steady state) against 16 distinct system prompts.
Time to first token is the time to the first SSE event, which the frontend sends with the first token.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from nanovl.serving.launch import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
QUESTIONS = ("Describe the image.", "What colours dominate it?", "Summarise your answers in one line.")
RULE = "Rule {i}: the assistant answers briefly, cites what it sees, and never invents numbers. "


def image_url(seed: int) -> str:
    """A 2048x1536 JPEG (4x3 tiles + a thumbnail: 13 tiles, NIM's documented example) of smooth noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((2048, 1536), Image.BILINEAR).save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


async def ttft(client: httpx.AsyncClient, url: str, messages: list[dict], tokens: int) -> tuple[float, str, dict]:
    """-> (seconds to the first event, the answer, usage) of one streamed greedy request."""
    body = {"model": MODEL, "messages": messages, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    started, first, text, usage = time.perf_counter(), None, "", {}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            first = first or time.perf_counter() - started
            chunk = json.loads(line[6:])
            text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
            usage = chunk.get("usage") or usage
    return first, text, usage


async def conversations(url: str, count: int, tokens: int, seed: int) -> list[list[tuple[float, dict]]]:
    """`count` conversations in lockstep: every conversation's turn t at once, then turn t + 1, so each turn is
    measured at the same concurrency (else an early turn 2 queues behind the others' turn 1). -> per
    conversation, (TTFT, usage) of each turn."""
    histories = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(seed + i)}},
                                               {"type": "text", "text": QUESTIONS[0]}]}] for i in range(count)]
    turns: list[list[tuple[float, dict]]] = [[] for _ in range(count)]
    async with httpx.AsyncClient(timeout=600) as client:
        for turn, question in enumerate(QUESTIONS):
            if turn:
                for messages in histories:
                    messages.append({"role": "user", "content": question})
            results = await asyncio.gather(*(ttft(client, url, messages, tokens) for messages in histories))
            for messages, record, (seconds, answer, usage) in zip(histories, turns, results):
                messages.append({"role": "assistant", "content": answer})
                record.append((seconds, usage))
    return turns


def system_prompt(tag: str) -> str:
    return tag + " " + "".join(RULE.format(i=i) for i in range(110))


async def shared_prefix(url: str, tokens: int, shared: bool) -> tuple[list[float], int]:
    tag = "shared" if shared else "distinct"

    def messages(i: int) -> list[dict]:
        system = system_prompt(tag if shared else f"{tag}-{i}")
        return [{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}: which rule first?"}]

    async with httpx.AsyncClient(timeout=600) as client:
        await ttft(client, url, messages(100), tokens)   # warm: the shared prompt is cached, the distinct one not
        results = await asyncio.gather(*(ttft(client, url, messages(i), tokens) for i in range(16)))
    return [seconds for seconds, _, _ in results], results[0][2].get("prompt_tokens", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--conversations", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    args = parser.parse_args()
    ports = [free_port() for _ in range(4)]
    stack = Stack(args.checkpoint.resolve(), port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                  http_port=ports[3])
    stack.start(deadline_s=300)
    url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
    try:
        asyncio.run(conversations(url, 1, 2, seed=10_000))   # warm-up: first-request costs out of the figures
        print(f"checkpoint {args.checkpoint}, {os.cpu_count()} cores, caches on (defaults), {args.tokens} tokens per "
              "answer, greedy; TTFT = median time to first token")
        print(f"{'conversations':>13} | {'turn 1':>9} | {'turn 2':>9} | {'turn 3':>9} | {'t1/t2':>6} | {'t1/t3':>6} | "
              f"cached tokens (turn 1, 2, 3 of the first)")
        for count in args.conversations:
            runs = asyncio.run(conversations(url, count, args.tokens, seed=count * 100))
            medians = [statistics.median(run[turn][0] for run in runs) * 1e3 for turn in range(3)]
            cached = [run_turn[1].get("prompt_tokens_details", {}).get("cached_tokens", 0) for run_turn in runs[0]]
            prompts = [run_turn[1].get("prompt_tokens", 0) for run_turn in runs[0]]
            print(f"{count:>13} | " + " | ".join(f"{m:>6.0f} ms" for m in medians)
                  + f" | {medians[0] / medians[1]:>5.1f}x | {medians[0] / medians[2]:>5.1f}x | "
                  + ", ".join(f"{c}/{p}" for c, p in zip(cached, prompts)), flush=True)
        shared, prompt_tokens = asyncio.run(shared_prefix(url, args.tokens, shared=True))
        distinct, _ = asyncio.run(shared_prefix(url, args.tokens, shared=False))
        ratio = statistics.median(distinct) / statistics.median(shared)
        print(f"16 clients, {prompt_tokens}-token prompts: shared system prompt median TTFT "
              f"{statistics.median(shared) * 1e3:.0f} ms, distinct {statistics.median(distinct) * 1e3:.0f} ms: "
              f"{ratio:.1f}x", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
