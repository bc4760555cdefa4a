"""make soak: many concurrent streams, round after round, through a stack of its own (tritonserver + frontend);
zero errors, every stream complete, and memory flat after the first round.

    python -m bench.soak [--checkpoint DIR] [--streams 64] [--rounds 5] [--tokens 32] [--growth-mb 24]

Each round sends --streams chat completions at once, streamed, mixed: text-only ones and ones with one or two
data-URL PNGs of a few sizes (1 to 13 tiles). A stream is complete when it ends with a finish_reason and
`[DONE]` and has no error event. After each round the RSS of tritonserver, of each Python stub and of the
frontend is read from /proc. Memory is flat when no process grows by more than --growth-mb from the end of the
first round (which holds the warm-up: caches, allocator pools) to the end of the last. Exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from nanovl.serving.launch import Stack, free_port
from nanovl.serving.supervisor import stub_processes

ROOT = Path(__file__).resolve().parent.parent

MODEL = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
IMAGE_SIZES = ((512, 512), (1024, 512), (1024, 1024), (64, 48))   # 1, 3, 5 and 13 tiles (no 2x up-scale)


def png_url(width: int, height: int, seed: int) -> str:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.putpixel((seed % width, seed % height), (seed % 256, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(i: int, tokens: int) -> dict:
    """Stream i of a round: a third text-only, a third one image, a third two images; some sampled, some greedy."""
    text = f"Request {i}: describe what you see in a few words."
    kind = i % 3
    if kind == 0:
        content: str | list = text
    else:
        images = [{"type": "image_url", "image_url": {"url": png_url(*IMAGE_SIZES[(i + k) % len(IMAGE_SIZES)], i)}}
                  for k in range(kind)]
        content = [*images, {"type": "text", "text": text}]
    sampling = {"temperature": 0} if i % 2 else {"temperature": 0.8, "top_p": 0.9, "seed": i}
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}, **sampling}


@dataclass
class StreamResult:
    ok: bool
    problem: str = ""
    tokens: int = 0


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> StreamResult:
    finish, done, tokens = None, False, 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return StreamResult(False, f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    return StreamResult(False, f"error event: {event['error']}")
                for choice in event["choices"]:
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return StreamResult(False, f"{type(exc).__name__}: {exc}")
    if not (finish and done):
        return StreamResult(False, f"incomplete: finish_reason={finish} [DONE]={done}")
    return StreamResult(True, tokens=tokens)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS, or its parts: RssAnon (private heap) and RssShmem (/dev/shm pages, shared with the server)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(stack: Stack) -> dict[str, int]:
    """Name -> pid of every process of the stack: tritonserver, each stub (stage#k), the frontend."""
    named = {"tritonserver": stack.triton.pid, "frontend": stack.processes[-1].pid}
    counts: dict[str, int] = {}
    for pid, stage in sorted(stub_processes(stack.triton.pid)):
        counts[stage] = counts.get(stage, 0) + 1
        named[f"{stage}#{counts[stage]}"] = pid
    return named


async def soak(stack: Stack, args) -> tuple[list[dict], list[dict[str, float]], dict[str, int]]:
    url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
    pids = processes(stack)
    rounds, memory = [], []
    limits = httpx.Limits(max_connections=args.streams, max_keepalive_connections=args.streams)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout_s), limits=limits) as client:
        for r in range(args.rounds):
            bodies = [request_body(r * args.streams + i, args.tokens) for i in range(args.streams)]
            started = time.monotonic()
            results = await asyncio.gather(*(one_stream(client, url, body) for body in bodies))
            elapsed = time.monotonic() - started
            problems = [res.problem for res in results if not res.ok]
            rounds.append({"round": r + 1, "streams": len(results), "complete": len(results) - len(problems),
                           "errors": len(problems), "tokens": sum(res.tokens for res in results),
                           "seconds": elapsed, "problems": problems[:3]})
            if processes(stack) != pids:
                rounds[-1]["problems"].append(f"processes changed (a stage restarted?): {processes(stack)}")
                rounds[-1]["errors"] += 1
            memory.append({name: rss_mb(pid) for name, pid in pids.items()})
            for name, pid in pids.items():
                memory[-1][f"{name} anon/shmem"] = (rss_mb(pid, "RssAnon"), rss_mb(pid, "RssShmem"))
            print(f"round {r + 1}: {rounds[-1]['complete']}/{len(results)} complete, {len(problems)} errors, "
                  f"{rounds[-1]['tokens']} tokens in {elapsed:.1f} s", flush=True)
    return rounds, memory, pids


def report(rounds: list[dict], memory: list[dict[str, float]], baseline: dict[str, float], growth_mb: float) -> bool:
    ok = True
    print("\n| round | streams | complete | errors | tokens | seconds |\n|---|---|---|---|---|---|")
    for row in rounds:
        print(f"| {row['round']} | {row['streams']} | {row['complete']} | {row['errors']} | {row['tokens']} | "
              f"{row['seconds']:.1f} |")
        for problem in row["problems"]:
            print(f"    {problem}")
        ok &= row["errors"] == 0 and row["complete"] == row["streams"]
    names = list(baseline)
    print("\n| RSS MB | before | " + " | ".join(f"round {i + 1}" for i in range(len(memory)))
          + " | growth after round 1 | flat |")
    print("|---" * (len(memory) + 4) + "|")
    for name in names:
        parts = [m[f"{name} anon/shmem"] for m in memory]
        print(f"| {name} anon / shmem | | " + " | ".join(f"{a:.0f} / {h:.0f}" for a, h in parts) + " | | |")
        growth = memory[-1][name] - memory[0][name]
        flat = growth <= growth_mb
        ok &= flat
        print(f"| {name} | {baseline[name]:.0f} | " + " | ".join(f"{m[name]:.0f}" for m in memory)
              + f" | {growth:+.1f} | {'yes' if flat else 'NO'} |")
    print(f"\n{'PASS' if ok else 'FAIL'}: {sum(r['streams'] for r in rounds)} streams in {len(rounds)} rounds, "
          f"{sum(r['errors'] for r in rounds)} errors; memory flat within {growth_mb:g} MB per process after round 1")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens per stream")
    parser.add_argument("--growth-mb", type=float, default=24.0,
                        help="largest RSS growth of any one process from round 1 to the last round")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per-stream HTTP timeout")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: memory is compared with the end of round 1")
    ports = [free_port() for _ in range(4)]
    stack = Stack(args.checkpoint.resolve(), port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                  http_port=ports[3])
    stack.start(deadline_s=180)
    try:
        baseline = {name: rss_mb(pid) for name, pid in processes(stack).items()}
        print(f"soak: {args.rounds} rounds of {args.streams} concurrent streams, {args.tokens} tokens each",
              flush=True)
        rounds, memory, _ = asyncio.run(soak(stack, args))
    finally:
        stack.stop()
    return 0 if report(rounds, memory, baseline, args.growth_mb) else 1


if __name__ == "__main__":
    sys.exit(main())
