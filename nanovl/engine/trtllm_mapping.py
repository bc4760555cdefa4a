"""TensorRT-LLM's Executor in our terms, without TensorRT-LLM: options and the engine directory, SamplingParams
-> SamplingConfig and Request arguments, guided decoding, logit bias, cache salt, the prompt table, streamed
results -> EngineOutputs, iteration stats. Plain functions, unit-tested on CPU; trtllm.py holds the Executor and
says which bindings were followed (TensorRT-LLM 1.2.1).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.errors import ClientError, ServerError
from .request import EngineOutput, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

# TensorRT-LLM FinishReason names -> ours. A request we cancelled is reported cancelled whatever reason its last
# response carries (an Executor may answer a cancel with an error), and NOT_FINISHED on a final response is told
# apart by its length.
_FINISH = {"END_ID": "stop", "STOP_WORDS": "stop", "LENGTH": "length", "CANCELLED": "cancelled",
           "TIMED_OUT": "error"}

# SamplingParams.guide_kind -> GuidedDecodingParams.GuideType member name.
GUIDE_TYPES = {"json": "JSON", "json_schema": "JSON_SCHEMA", "regex": "REGEX", "ebnf": "EBNF_GRAMMAR",
               "structural_tag": "STRUCTURAL_TAG"}
RUNTIME = "the tensorrt_llm engine (TensorRT-LLM 1.2.1)"


@dataclass(frozen=True)
class TrtLlmOptions:
    engine_dir: Path
    max_batch_size: int | None = None            # None: the engine's; at most trtllm-build's --max_batch_size
    max_num_tokens: int | None = None            # None: the engine's
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_chunked_context: bool = True
    # Block reuse keys cached blocks by token ids; image rows all look alike (ids >= vocab_size), so each
    # image-row token also carries an id of its image (the prompt-tuning config's input_token_extra_ids).
    enable_kv_cache_reuse: bool = True
    # xgrammar in the Executor, fed the checkpoint's tokenizer.json; without it a guided request is refused.
    enable_guided_decoding: bool = True
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


def refusal(params: SamplingParams, *, vocab_size: int, guided: bool) -> ClientError | None:
    """Why the Executor cannot honour these settings (a 400 naming the field and the runtime), or None."""
    if params.logprobs:
        return ClientError(f"top_logprobs > 0 is not available with {RUNTIME}: only the chosen token's logprob",
                           param="top_logprobs")
    if params.guide_kind is not None and not guided:
        return ClientError(f"structured output ({params.guide_kind}) needs guided decoding, which is off in {RUNTIME} "
                           "here (the llm stage's enable_guided_decoding, or no tokenizer.json)",
                           param="response_format")
    if params.guide_kind is not None and params.guide_kind not in GUIDE_TYPES:
        return ClientError(f"guide kind {params.guide_kind!r} is not one {RUNTIME} knows", param="response_format")
    bad = [t for t, _ in params.logit_bias if not 0 <= t < vocab_size]
    if bad:
        return ClientError(f"logit_bias token {bad[0]} is outside the vocabulary of {vocab_size}", param="logit_bias")
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
        # Choices are sampled as independent sequences of one request, each streamed with its sequence_index.
        "num_return_sequences": params.n if params.n > 1 else None,
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


def _digest(data: bytes) -> int:
    """A non-zero 63-bit id (TensorRT-LLM's extra ids and salt ids are 64-bit; 0 means "none")."""
    return (int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1) or 1


def table_extra_ids(prompt_ids: np.ndarray, table: np.ndarray, vocab_size: int) -> list[int]:
    """Per-token ids that make KV-cache block reuse tell images apart when the request brings none of its own
    (GenerationRequest.prompt_extra_ids): a hash of the whole table for image-row tokens, 0 for text tokens."""
    digest = _digest(table.tobytes())
    return [digest if t >= vocab_size else 0 for t in prompt_ids.tolist()]


def extra_ids(prompt_ids: np.ndarray, given: np.ndarray | None, table: np.ndarray, vocab_size: int) -> list[int]:
    """input_token_extra_ids of the prompt-tuning config: the request's per-image ids when it has them."""
    if given is None:
        return table_extra_ids(prompt_ids, table, vocab_size)
    given = np.asarray(given, np.int64).reshape(-1)
    if len(given) != len(prompt_ids):
        raise ServerError(f"prompt_extra_ids has {len(given)} ids for a {len(prompt_ids)}-token prompt")
    return given.tolist()


def cache_salt_id(salt: str | None) -> int | None:
    """vLLM's cache_salt -> Request(cache_salt_id=...): blocks are reused only among requests with the same id."""
    return None if salt is None else _digest(salt.encode())


def embedding_bias(params: SamplingParams, vocab_size: int) -> np.ndarray | None:
    """logit_bias -> the Request's embedding_bias: float32 [vocab_size], added to the logits before sampling."""
    if not params.logit_bias:
        return None
    bias = np.zeros(vocab_size, np.float32)
    for token, value in params.logit_bias:
        bias[token] += value
    return bias


def guided_decoding_vocab(checkpoint: Path) -> tuple[list[str], str] | None:
    """GuidedDecodingConfig's encoded_vocab (token strings by id, as tokenizer.json spells them) and tokenizer_str
    (tokenizer.json itself, from which xgrammar reads how the strings encode bytes), or None without one."""
    path = Path(checkpoint) / "tokenizer.json"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")   # a Triton stub's locale may be ASCII; the vocabulary is not
    spec = json.loads(text)
    by_id = {int(i): token for token, i in spec.get("model", {}).get("vocab", {}).items()}
    by_id.update({int(t["id"]): t["content"] for t in spec.get("added_tokens", [])})
    size = max(by_id) + 1 if by_id else 0
    return [by_id.get(i, "") for i in range(size)], text


def tokens_per_block(built: dict) -> int:
    """The engine's KV block size (trtllm-build's --tokens_per_block; 32 when it was not given)."""
    build = built.get("build_config", {})
    return int(build.get("plugin_config", {}).get("tokens_per_block") or build.get("tokens_per_block") or 32)


def cached_tokens(result, block_tokens: int, prompt_len: int) -> int:
    """Prompt tokens served from reused KV blocks, from a Result's perf metrics (whole blocks, so a partly
    reused last block counts whole; never more than the prompt)."""
    metrics = getattr(getattr(result, "request_perf_metrics", None), "kv_cache_metrics", None)
    return min(prompt_len, int(getattr(metrics, "num_reused_blocks", 0) or 0) * block_tokens)


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
    """What the response thread needs about one submitted request (all of its n sequences)."""

    request_id: str
    prompt_len: int
    params: SamplingParams
    completed: dict[int, int] = field(default_factory=dict)   # sequence index -> tokens counted so far
    finished: set[int] = field(default_factory=set)           # sequences that had their final output
    cancelled: bool = False       # cancel() was called: its final responses are "cancelled" whatever they say
    cached_tokens: int = 0


def engine_output(live: LiveRequest, tokens: list[int], *, final: bool, reason_name: str | None,
                  log_probs: list[float] | None = None, sequence_index: int = 0) -> EngineOutput:
    """One streamed Executor result (the new tokens of one sequence) -> EngineOutput; advances that sequence's
    count. final: the sequence is final (Result.is_sequence_final).

    As the reference engine: a stop token is neither shown nor counted in completion_tokens (NIM's usage). The
    Executor may or may not return the end id itself; either way it is dropped.
    """
    done = live.completed.get(sequence_index, 0)
    reason = None
    if final and live.cancelled:
        reason = "cancelled"
    elif final:
        # No finish reason (NOT_FINISHED): tell length from stop by the count.
        fallback = "length" if done + len(tokens) >= live.params.max_tokens else "stop"
        reason = _FINISH.get(reason_name or "", fallback)
    shown = list(tokens)
    if reason == "stop" and shown and shown[-1] in live.params.stop_token_ids:
        shown.pop()
    live.completed[sequence_index] = done + len(shown)
    if reason is not None:
        live.finished.add(sequence_index)
    logprobs = None
    if live.params.logprobs is not None:
        values = list(log_probs or [])[-len(tokens):] if tokens else []
        values += [0.0] * (len(tokens) - len(values))
        logprobs = [TokenLogprob(v, []) for v in values[:len(shown)]]
    return EngineOutput(live.request_id, shown, reason, live.prompt_len, done + len(shown), logprobs=logprobs,
                        sequence_index=sequence_index, cached_tokens=live.cached_tokens)


def closing_outputs(live: LiveRequest, reason: str, error: str | None = None) -> list[EngineOutput]:
    """The final output of every sequence of a request that has not had one: an error response, a shutdown or
    an unreadable response ends all of them."""
    return [EngineOutput(live.request_id, [], reason, live.prompt_len, live.completed.get(i, 0), error,
                         sequence_index=i, cached_tokens=live.cached_tokens)
            for i in range(live.params.n) if i not in live.finished]


def stats_from_iteration(iteration) -> tuple[int, int, float]:
    """An executor IterationStats -> (running, waiting, kv-cache usage in [0, 1])."""
    kv = getattr(iteration, "kv_cache_stats", None)
    usage = 0.0
    if kv is not None and getattr(kv, "max_num_blocks", 0):
        usage = kv.used_num_blocks / kv.max_num_blocks
    return int(iteration.num_active_requests), int(iteration.num_queued_requests), float(usage)
