"""TensorRT-LLM's Executor in our terms, without TensorRT-LLM: options and the engine directory, SamplingParams
-> SamplingConfig and Request arguments, the prompt table, streamed results -> EngineOutputs, iteration stats.
Plain functions, unit-tested on CPU; trtllm.py holds the Executor and says which bindings were followed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import ServerError
from .request import EngineOutput, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

# TensorRT-LLM FinishReason names -> ours. 0.14 has END_ID, STOP_WORDS and LENGTH only (CANCELLED and TIMED_OUT
# came later): a request we cancelled is reported cancelled whatever reason its last response carries, and
# NOT_FINISHED on a final response is told apart by its length.
_FINISH = {"END_ID": "stop", "STOP_WORDS": "stop", "LENGTH": "length", "CANCELLED": "cancelled",
           "TIMED_OUT": "error"}


@dataclass(frozen=True)
class TrtLlmOptions:
    engine_dir: Path
    max_batch_size: int | None = None            # None: the engine's; at most trtllm-build's --max_batch_size
    max_num_tokens: int | None = None            # None: the engine's
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_chunked_context: bool = True
    # Block reuse keys cached blocks by token ids; image rows all look alike (ids >= vocab_size), so each
    # image-row token also carries a hash of its table (input_token_extra_ids, in 0.14 already) when reuse is on.
    enable_kv_cache_reuse: bool = False
    executor_worker_path: str = ""               # "": TensorRT-LLM's own (executor_worker)


# The tensorrtllm backend installs a copy of the wheel's worker here in NVIDIA's Triton containers.
BACKEND_WORKER = Path("/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker")


def executor_worker(configured: str, package_dir: Path) -> Path:
    """The program the Executor spawns on each GPU in orchestrator mode: a missing one would fail later inside
    MPI_Comm_spawn with an error that does not say what is missing."""
    candidates = [Path(configured)] if configured else [package_dir / "bin" / "executorWorker", BACKEND_WORKER]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError("tensor parallelism needs TensorRT-LLM's executorWorker, which is not at "
                      f"{' or '.join(map(str, candidates))} (or is not executable there); set the llm parameter "
                      "executor_worker_path")


def unsupported(params: SamplingParams) -> str | None:
    """Why the Executor cannot honour these settings, or None."""
    if params.logprobs:
        return "top_logprobs > 0 is not available with the tensorrt_llm engine (only the chosen token's logprob)"
    return None


def sampling_kwargs(params: SamplingParams, *, random_seed: int | None = None) -> dict:
    """SamplingParams -> keyword arguments of executor.SamplingConfig (None = the Executor's default).

    random_seed: the seed of a sampled request that names none. The Executor's own default is seed 0 for
    every request, so equal prompts would draw equal text (TensorRT-LLM issues #1000, #2411).
    """
    greedy = params.greedy
    return {
        "beam_width": 1,
        # Greedy is top_k=1 for the Executor: it takes no temperature 0.
        "top_k": 1 if greedy else (params.top_k or None),
        # Always sent when sampling: the Executor's defaults are top_k=0 and top_p=0, which its kernels read as
        # top_k=1, so a request with neither set would decode greedily.
        "top_p": None if greedy else params.top_p,
        "temperature": None if greedy else params.temperature,
        "seed": params.seed if params.seed is not None or greedy else random_seed,
        "min_tokens": params.min_tokens or None,
        "repetition_penalty": None if params.repetition_penalty == 1.0 else params.repetition_penalty,
        "presence_penalty": params.presence_penalty or None,
        "frequency_penalty": params.frequency_penalty or None,
    }


def request_kwargs(params: SamplingParams) -> dict:
    """SamplingParams -> the scalar keyword arguments of executor.Request (tokens and configs aside)."""
    stops = list(params.stop_token_ids)
    return {
        "max_tokens": params.max_tokens,
        "streaming": True,
        "end_id": stops[0] if stops else None,
        "pad_id": stops[0] if stops else None,
        # Every stop id beyond the first is a one-token stop word.
        "stop_words": [[t] for t in stops[1:]] or None,
        "return_log_probs": params.logprobs is not None,
    }


def prompt_table(prompt_ids: np.ndarray, table, vocab_size: int) -> np.ndarray | None:
    """The image rows the prompt's ids >= vocab_size index (row id - vocab_size), checked, or None.

    prompt_ids: int32 [prompt_len]; table: float [rows, hidden] or None -> float32 [rows, hidden] or None.
    """
    fake = prompt_ids[prompt_ids >= vocab_size]
    if table is None or len(table) == 0:
        if len(fake):
            raise ServerError(f"{len(fake)} prompt ids >= vocab_size {vocab_size} but no prompt table")
        return None
    table = np.asarray(table, np.float32)
    if table.ndim != 2:
        raise ServerError(f"prompt table must be [rows, hidden], got shape {table.shape}")
    if len(fake) and int(fake.max()) - vocab_size >= len(table):
        raise ServerError(f"prompt id {int(fake.max())} indexes row {int(fake.max()) - vocab_size} of a "
                          f"{len(table)}-row prompt table")
    return table


def table_extra_ids(prompt_ids: np.ndarray, table: np.ndarray, vocab_size: int) -> list[int]:
    """Per-token ids that make KV-cache block reuse tell images apart: a hash of the table for image-row
    tokens (>= 1), 0 for text tokens."""
    digest = int.from_bytes(hashlib.blake2b(table.tobytes(), digest_size=8).digest(), "little") or 1
    return [digest if t >= vocab_size else 0 for t in prompt_ids.tolist()]


def engine_config(engine_dir: Path) -> dict:
    """trtllm-build's config.json of an engine directory."""
    config_file = Path(engine_dir) / "config.json"
    if not config_file.is_file():
        raise ServerError(f"{engine_dir} is not a TensorRT-LLM engine directory: no config.json "
                          "(build one with `make engine`)")
    return json.loads(config_file.read_text())


def engine_world_size(built: dict) -> int:
    """GPUs the engine was built for (tensor x pipeline parallel), from its engine_config()."""
    mapping = built.get("pretrained_config", {}).get("mapping", {})
    return int(mapping.get("world_size", mapping.get("tp_size", 1) * mapping.get("pp_size", 1)))


def within_build(options: TrtLlmOptions, built: dict) -> TrtLlmOptions:
    """The options with max_batch_size and max_num_tokens capped at what trtllm-build built the engine for
    (build_config of its engine_config()): a repository not written by `make engine` may ask for more."""
    build = built.get("build_config", {})
    capped = {}
    for name in ("max_batch_size", "max_num_tokens"):
        asked, limit = getattr(options, name), build.get(name)
        if limit is not None and (asked is None or asked > limit):
            if asked is not None:
                log.warning("%s %d is more than the engine was built for; using %d", name, asked, limit)
            capped[name] = int(limit)
    return replace(options, **capped)


@dataclass
class LiveRequest:
    """What the response thread needs about one submitted request."""

    request_id: str
    prompt_len: int
    params: SamplingParams
    completed: int = 0
    cancelled: bool = False       # cancel() was called: its final response is "cancelled" whatever it says


def engine_output(live: LiveRequest, tokens: list[int], *, final: bool, reason_name: str | None,
                  log_probs: list[float] | None = None) -> EngineOutput:
    """One streamed Executor result (the new tokens of beam 0) -> EngineOutput; advances live.completed.

    As the reference engine: a stop token is neither shown nor counted in completion_tokens (NIM's usage). The
    Executor may or may not return the end id itself; either way it is dropped.
    """
    reason = None
    if final and live.cancelled:
        reason = "cancelled"
    elif final:
        # No finish reason (older bindings, NOT_FINISHED): tell length from stop by the count.
        fallback = "length" if live.completed + len(tokens) >= live.params.max_tokens else "stop"
        reason = _FINISH.get(reason_name or "", fallback)
    shown = list(tokens)
    if reason == "stop" and shown and shown[-1] in live.params.stop_token_ids:
        shown.pop()
    live.completed += len(shown)
    logprobs = None
    if live.params.logprobs is not None:
        values = list(log_probs or [])[-len(tokens):] if tokens else []
        values += [0.0] * (len(tokens) - len(values))
        logprobs = [TokenLogprob(v, []) for v in values[:len(shown)]]
    return EngineOutput(live.request_id, shown, reason, live.prompt_len, live.completed, logprobs=logprobs)


def stats_from_iteration(iteration) -> tuple[int, int, float]:
    """An executor IterationStats -> (running, waiting, kv-cache usage in [0, 1])."""
    kv = getattr(iteration, "kv_cache_stats", None)
    usage = 0.0
    if kv is not None and getattr(kv, "max_num_blocks", 0):
        usage = kv.used_num_blocks / kv.max_num_blocks
    return int(iteration.num_active_requests), int(iteration.num_queued_requests), float(usage)
