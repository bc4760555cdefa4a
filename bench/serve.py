"""make bench-serve: streamed tokens/s and time to first token through the whole stack (OpenAI frontend +
tritonserver ensemble) at 1, 16 and 64 concurrent clients, next to the same load on the llm engine in-process
(so the serving overhead is a ratio) and on `transformers serve --continuous-batching` (same weights, prompts
and token budget). Each system runs alone on the machine; the HTTP clients are one asyncio process (httpx).

    python -m bench.serve [--checkpoint DIR] [--tokens 64] [--rounds 4] [--concurrency 1 16 64] [--no-transformers]

Every client sends `rounds` requests one after the other (a closed loop), each a different chat prompt, greedy.
Our engine and stack generate exactly --tokens tokens (min_tokens = max_tokens). transformers serve has no
min_tokens and may stop early at an eos: its tokens are counted, one per streamed chunk, not assumed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from nanovl.core.checkpoint import load_config, load_llm, load_tokenizer
from nanovl.engine.factory import EngineSettings, build_engine
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.serving.launch import Stack, free_port, wait_for_http
from nanovl.core.prompt import build_input_ids, parse_messages

ROOT = Path(__file__).resolve().parent.parent

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"


@dataclass
class Result:
    tokens: int = 0
    elapsed: float = 0.0
    ttfts: list[float] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.elapsed

    def ttft_ms(self, q: float = 0.5) -> float:
        ordered = sorted(self.ttfts)
        return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def texts(n: int) -> list[str]:
    """The chat prompts, as text (one per request)."""
    return [f"Request {i}: describe picture number {i} with its colours, shapes and text. " * (1 + i % 4)
            for i in range(n)]


def prompt_ids(config, tokenizer, prompts_: list[str]) -> list[list[int]]:
    """The ids the preprocessing stage makes of each chat prompt (the same functions, no images)."""
    return [build_input_ids(tokenizer, config, parse_messages([{"role": "user", "content": text}]), []).tolist()
            for text in prompts_]


def engine_load(engine, outputs: queue.SimpleQueue, ids: list[list[int]], tokens: int, clients: int,
                rounds: int) -> Result:
    """The same closed loop on the engine in-process: a client submits its next request when one finishes."""
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0.0)
    result, sent, submitted, owner = Result(), [0] * clients, {}, {}

    def submit(client: int) -> None:
        request_id = f"{client}-{sent[client]}"
        owner[request_id] = client
        submitted[request_id] = time.perf_counter()
        engine.submit(GenerationRequest(request_id, ids[client * rounds + sent[client]], params))
        sent[client] += 1

    started = time.perf_counter()
    for client in range(clients):
        submit(client)
    active = clients
    while active:
        out = outputs.get(timeout=600)
        if out.token_ids and out.request_id in submitted:
            result.ttfts.append(time.perf_counter() - submitted.pop(out.request_id))
        result.tokens += len(out.token_ids)
        if out.finish_reason is not None:
            client = owner[out.request_id]
            if sent[client] < rounds:
                submit(client)
            else:
                active -= 1
    result.elapsed = time.perf_counter() - started
    return result


async def http_load(url: str, model: str, prompts_: list[str], tokens: int, clients: int, rounds: int,
                    extra: dict | None = None) -> Result:
    """Streamed chat completions from `clients` concurrent clients; tokens from the usage chunk if sent."""
    result = Result()

    async def one(http: httpx.AsyncClient, text: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
        sent, first, chunks, usage = time.perf_counter(), None, 0, None
        async with http.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                usage = (event.get("usage") or {}).get("completion_tokens", usage)
                if any(choice.get("delta", {}).get("content") for choice in event.get("choices", ())):
                    first = first or time.perf_counter()
                    chunks += 1
        result.ttfts.append((first or time.perf_counter()) - sent)
        result.tokens += usage if usage is not None else chunks

    async def client(http: httpx.AsyncClient, index: int) -> None:
        for r in range(rounds):
            await one(http, prompts_[index * rounds + r])

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as http:
        await one(http, "warm up")   # connection set-up and first-request costs stay out of the timing
        result.tokens, result.ttfts = 0, []
        started = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        result.elapsed = time.perf_counter() - started
    return result


def run_engine(checkpoint: Path, args) -> dict[int, Result]:
    config = load_config(checkpoint)
    tokenizer = load_tokenizer(config)
    outputs: queue.SimpleQueue = queue.SimpleQueue()
    # The llm stage's own settings (max_running, KV cache, one torch thread), so only the serving path differs.
    engine = build_engine(EngineSettings(), config, outputs.put)
    try:
        engine_load(engine, outputs, prompt_ids(config, tokenizer, texts(2)), 4, 2, 1)   # warm-up
        return {n: engine_load(engine, outputs, prompt_ids(config, tokenizer, texts(n * args.rounds)), args.tokens,
                               n, args.rounds) for n in args.concurrency}
    finally:
        engine.shutdown()


def run_stack(checkpoint: Path, args) -> dict[int, Result]:
    ports = [free_port() for _ in range(4)]
    stack = Stack(checkpoint, port=ports[0], grpc_port=ports[1], metrics_port=ports[2], http_port=ports[3])
    stack.start(deadline_s=300)
    try:
        url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
        return {n: asyncio.run(http_load(url, MODEL, texts(n * args.rounds), args.tokens, n, args.rounds,
                                         {"min_tokens": args.tokens})) for n in args.concurrency}
    finally:
        stack.stop()


def run_transformers(checkpoint: Path, args) -> dict[int, Result]:
    """transformers serve on a plain Llama checkpoint split from ours (language_model.* + llm_config)."""
    config = load_config(checkpoint)
    with tempfile.TemporaryDirectory(prefix="nanovl-plain-llama-") as plain:
        load_llm(config).save_pretrained(plain)
        load_tokenizer(config).save_pretrained(plain)
        port = free_port()
        command = [str(Path(sys.executable).parent / "transformers"), "serve", "--continuous-batching",
                   "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), plain]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", deadline_s=300, process=server)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            # Its continuous-batching manager starts on the first requests: warm it at the largest load once.
            asyncio.run(http_load(url, plain, texts(max(args.concurrency)), 4, max(args.concurrency), 1))
            return {n: asyncio.run(http_load(url, plain, texts(n * args.rounds), args.tokens, n, args.rounds))
                    for n in args.concurrency}
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="requests per client, one after the other")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers serve")
    args = parser.parse_args()
    checkpoint = args.checkpoint.resolve()
    engine = run_engine(checkpoint, args)
    stack = run_stack(checkpoint, args)
    theirs = {} if args.no_transformers else run_transformers(checkpoint, args)
    print(f"checkpoint {checkpoint}, {os.cpu_count()} cores, {args.tokens} tokens per request, greedy, {args.rounds} "
          "requests per client; tok/s = generated tokens / wall time, TTFT = median time to first token")
    print(f"{'clients':>7} | {'engine in-process':>22} | {'frontend + Triton':>22} | {'stack/engine':>12} | "
          f"{'transformers serve':>22} | {'stack/theirs':>12}")
    for n in args.concurrency:
        row = f"{n:>7} | " + " | ".join(f"{r.tok_s:>7.0f} tok/s {r.ttft_ms():>6.1f} ms" for r in (engine[n], stack[n])) \
            + f" | {stack[n].tok_s / engine[n].tok_s:>11.0%} | "
        if n in theirs:
            ratio = stack[n].tok_s / theirs[n].tok_s
            row += f"{theirs[n].tok_s:>7.0f} tok/s {theirs[n].ttft_ms():>6.1f} ms | {ratio:>11.2f}x"
        print(row, flush=True)


if __name__ == "__main__":
    main()
