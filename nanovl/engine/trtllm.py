"""The TensorRT-LLM engine: the Executor of a `make engine` build behind the reference engine's interface.

submit / cancel / shutdown, outputs through `on_output` (tokens since the last output, a finish reason on the
last one) and a `stats` attribute, as ReferenceEngine. The Executor does the in-flight batching, the paged KV
cache and chunked context; one thread waits for its responses and turns them into EngineOutputs.

API followed: `tensorrt_llm.bindings.executor` as bound in TensorRT-LLM's cpp/tensorrt_llm/pybind/executor
(Request, SamplingConfig, OutputConfig, PromptTuningConfig, KvCacheConfig, ExecutorConfig, ParallelConfig),
read on its main branch and checked against the v0.14.0 tag (the container's version) and its Triton backend's
model.py; no GPU has run this yet.
tensorrt_llm is imported only when this engine is built, so the module imports on CPU; everything that does
not need the Executor is a plain function here, unit-tested without TensorRT-LLM.

Semantics that differ from the reference engine (documented, not hidden):
- TensorRT-LLM's penalties count prompt and output tokens; OpenAI's frequency/presence penalties (and the
  reference engine) count output tokens only.
- min_tokens holds back the end id; the other stop ids are stop words, which min_tokens does not hold back.
- Only the chosen token's logprob comes back from the Executor: top_logprobs > 0 is refused per request.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.checkpoint import CheckpointConfig
from ..core.errors import ServerError
from .request import EngineOutput, EngineStats, GenerationRequest, SamplingParams, TokenLogprob

log = logging.getLogger(__name__)

_POLL = timedelta(milliseconds=50)      # await_responses timeout: how quickly shutdown is noticed
_STATS_EVERY_S = 0.5
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
class _Live:
    """What the response thread needs about one submitted request."""

    request_id: str
    prompt_len: int
    params: SamplingParams
    completed: int = 0
    cancelled: bool = False       # cancel() was called: its final response is "cancelled" whatever it says


def engine_output(live: _Live, tokens: list[int], *, final: bool, reason_name: str | None,
                  log_probs: list[float] | None = None) -> EngineOutput:
    """One streamed Executor result (the new tokens of beam 0) -> EngineOutput; advances live.completed.

    As the reference engine: a stop token is counted in completion_tokens but not shown. The Executor may
    or may not return the end id itself; either way it is counted once.
    """
    reason = None
    if final and live.cancelled:
        reason = "cancelled"
    elif final:
        # No finish reason (older bindings, NOT_FINISHED): tell length from stop by the count.
        fallback = "length" if live.completed + len(tokens) >= live.params.max_tokens else "stop"
        reason = _FINISH.get(reason_name or "", fallback)
    shown = list(tokens)
    counted = len(tokens)
    if reason == "stop":
        if shown and shown[-1] in live.params.stop_token_ids:
            shown.pop()
        elif reason_name == "END_ID":
            counted += 1
    live.completed += counted
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


def _import_executor():
    try:
        from tensorrt_llm.bindings import executor
    except ImportError as exc:
        raise ServerError("engine 'tensorrt_llm' needs TensorRT-LLM, which is not installed here "
                          f"({exc}); use NVIDIA's Triton + TensorRT-LLM container (Dockerfile) or "
                          "engine=reference") from exc
    return executor


class TrtLlmEngine:
    def __init__(self, options: TrtLlmOptions, config: CheckpointConfig,
                 on_output: Callable[[EngineOutput], None]):
        self._tle = _import_executor()
        self._built = engine_config(options.engine_dir)
        options = within_build(options, self._built)
        self.options = options
        self.config = config
        self.on_output = on_output
        self.stats = EngineStats()
        self._live: dict[int, _Live] = {}           # executor request id -> request
        self._by_key: dict[str, int] = {}           # our request id -> executor request id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.executor = self._tle.Executor(Path(options.engine_dir), self._tle.ModelType.DECODER_ONLY,
                                           self._executor_config())
        self._thread = threading.Thread(target=self._loop, name="trtllm-responses", daemon=True)

    def _executor_config(self):
        tle, opts = self._tle, self.options
        kv = tle.KvCacheConfig(enable_block_reuse=opts.enable_kv_cache_reuse,
                               free_gpu_memory_fraction=opts.kv_cache_free_gpu_memory_fraction)
        kwargs = {"max_beam_width": 1, "kv_cache_config": kv, "enable_chunked_context": opts.enable_chunked_context,
                  "max_batch_size": opts.max_batch_size, "max_num_tokens": opts.max_num_tokens}
        world = engine_world_size(self._built)
        if world > 1:
            # Orchestrator mode: this process spawns one MPI worker per GPU, so tritonserver needs no mpirun.
            import tensorrt_llm

            worker = executor_worker(opts.executor_worker_path, Path(tensorrt_llm.__file__).parent)
            kwargs["parallel_config"] = tle.ParallelConfig(
                tle.CommunicationType.MPI, tle.CommunicationMode.ORCHESTRATOR, device_ids=list(range(world)),
                orchestrator_config=tle.OrchestratorConfig(True, str(worker)))
        return tle.ExecutorConfig(**{k: v for k, v in kwargs.items() if v is not None})

    def start(self) -> "TrtLlmEngine":
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        params = request.sampling
        reason = unsupported(params)
        steps = self.options.max_num_tokens
        if reason is None and not self.options.enable_chunked_context and steps and len(request.prompt_ids) > steps:
            # Without chunked context a prompt must fit one step; the Executor would refuse it less clearly.
            reason = (f"the prompt is {len(request.prompt_ids)} tokens; without chunked context this engine takes "
                      f"at most {steps} (max_num_tokens)")
        if reason is not None:
            self.on_output(EngineOutput(request.request_id, [], "error", len(request.prompt_ids), 0, reason))
            return
        try:
            executor_request = self._request(request)
            with self._lock:   # held across enqueue so the response thread always finds the id
                key = self.executor.enqueue_request(executor_request)
                self._live[key] = _Live(request.request_id, len(request.prompt_ids), params)
                self._by_key[request.request_id] = key
        except Exception as exc:   # a request the Executor refuses fails alone
            log.exception("enqueue of %s failed", request.request_id)
            self.on_output(EngineOutput(request.request_id, [], "error", len(request.prompt_ids), 0,
                                        f"tensorrt_llm refused the request: {exc}"))

    def _request(self, request: GenerationRequest):
        tle = self._tle
        ids = np.asarray(request.prompt_ids, np.int64)
        scalars = request_kwargs(request.sampling)
        output_config = tle.OutputConfig(return_log_probs=scalars.pop("return_log_probs"),
                                         exclude_input_from_output=True)
        table = prompt_table(ids, request.prompt_table, self.config.vocab_size)
        tuning = None
        if table is not None:
            tuning_args = [self._table_tensor(table)]
            if self.options.enable_kv_cache_reuse:
                tuning_args.append(table_extra_ids(ids, table, self.config.vocab_size))
            tuning = tle.PromptTuningConfig(*tuning_args)
        sampling = sampling_kwargs(request.sampling, random_seed=secrets.randbits(63))
        return tle.Request(ids.tolist(), sampling_config=tle.SamplingConfig(**sampling),
                           output_config=output_config, prompt_tuning_config=tuning,
                           **{k: v for k, v in scalars.items() if v is not None})

    def _table_tensor(self, table: np.ndarray):
        """float32 [rows, hidden] -> a host torch tensor in the engine's dtype (the dtype must match the engine's
        weights); the Executor copies it to the GPU, as TensorRT-LLM's own Triton backend relies on."""
        import torch

        dtype = {"float16": torch.float16, "float32": torch.float32}.get(
            self._built.get("pretrained_config", {}).get("dtype"), torch.bfloat16)
        return torch.from_numpy(table).to(dtype)

    def cancel(self, request_id: str) -> None:
        with self._lock:
            key = self._by_key.get(request_id)
        if key is not None:
            with self._lock:
                if key in self._live:
                    self._live[key].cancelled = True
            self.executor.cancel_request(key)   # a final response follows, with CANCELLED from 0.16 on

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.executor.shutdown()
        with self._lock:   # whatever was still running gets its final response rather than silence
            live, self._live, self._by_key = list(self._live.values()), {}, {}
        for request in live:
            self.on_output(EngineOutput(request.request_id, [], "error", request.prompt_len, request.completed,
                                        "the llm engine shut down"))

    def _loop(self) -> None:
        last_stats = 0.0
        while not self._stop.is_set():
            try:
                responses = self.executor.await_responses(_POLL)
            except Exception:
                log.exception("await_responses failed")
                self._stop.wait(_POLL.total_seconds())   # a broken Executor must not spin this thread
                continue
            for response in responses:
                try:
                    self._deliver(response)
                except Exception as exc:   # one response we cannot read fails its request, not the thread
                    log.exception("response for executor request %s", getattr(response, "request_id", "?"))
                    self._fail(getattr(response, "request_id", None), f"reading its response failed: {exc}")
            if time.monotonic() - last_stats > _STATS_EVERY_S:
                last_stats = time.monotonic()
                try:
                    self._update_stats()
                except Exception:
                    log.exception("iteration stats failed")

    def _fail(self, key, error: str) -> None:
        with self._lock:
            live = self._live.pop(key, None)
            if live is not None:
                self._by_key.pop(live.request_id, None)
        if live is not None:
            self.executor.cancel_request(key)
            self.on_output(EngineOutput(live.request_id, [], "error", live.prompt_len, live.completed, error))

    def _deliver(self, response) -> None:
        with self._lock:
            live = self._live.get(response.request_id)
        if live is None:
            return
        if response.has_error() and live.cancelled:   # a cancelled request the Executor answers with an error
            out = EngineOutput(live.request_id, [], "cancelled", live.prompt_len, live.completed)
        elif response.has_error():
            out = EngineOutput(live.request_id, [], "error", live.prompt_len, live.completed, response.error_msg)
        else:
            result = response.result
            reasons = getattr(result, "finish_reasons", None) or []
            log_probs = result.log_probs[0] if result.log_probs else None
            out = engine_output(live, list(result.output_token_ids[0]), final=result.is_final,
                                reason_name=reasons[0].name if reasons else None, log_probs=log_probs)
        if out.finished:
            with self._lock:
                self._live.pop(response.request_id, None)
                self._by_key.pop(live.request_id, None)
        if out.token_ids or out.finished:
            self.on_output(out)

    def _update_stats(self) -> None:
        iterations = self.executor.get_latest_iteration_stats()
        if iterations:
            self.stats.running, self.stats.waiting, self.stats.kv_cache_usage = stats_from_iteration(iterations[-1])
            self.stats.steps = int(iterations[-1].iter)
        elif not self._live:
            # An idle Executor reports no iterations: without this the gauges (and the autoscaler) would keep
            # the last busy values.
            self.stats.running = self.stats.waiting = 0
            self.stats.kv_cache_usage = 0.0
