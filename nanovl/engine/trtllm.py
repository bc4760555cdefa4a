"""The TensorRT-LLM engine: the Executor of a `make engine` build behind the reference engine's interface.

An Engine (protocol.py), as ReferenceEngine. The Executor does the in-flight batching, the paged KV
cache with block reuse, chunked context and guided decoding (xgrammar); one thread waits for its responses and
turns them into EngineOutputs.

API followed: `tensorrt_llm.bindings.executor` of TensorRT-LLM 1.2.1, the version in Triton's
26.04-trtllm-python-py3 container, as bound in cpp/tensorrt_llm/nanobind/executor (Request, SamplingConfig,
OutputConfig, PromptTuningConfig, GuidedDecodingParams, GuidedDecodingConfig, KvCacheConfig, ExecutorConfig,
ParallelConfig, OrchestratorConfig; Result's sequence_index and request_perf_metrics); no GPU has run this yet.
tensorrt_llm is imported only when this engine is built, so the module imports on CPU; everything that does
not need the Executor is a plain function in trtllm_mapping.py, unit-tested without TensorRT-LLM.

Semantics that differ from the reference engine (documented, not hidden):
- TensorRT-LLM's penalties count prompt and output tokens; OpenAI's frequency/presence penalties (and the
  reference engine) count output tokens only.
- min_tokens holds back the end id; the other stop ids are stop words, which min_tokens does not hold back.
- Only the chosen token's logprob comes back from the Executor: top_logprobs > 0 is refused per request (400).
- cached_tokens counts whole reused KV blocks (the Executor reports blocks, not tokens).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

from ..core.checkpoint import CheckpointConfig
from ..core.errors import ServerError
from .protocol import OnOutput
from .request import EngineStats, GenerationRequest
from .trtllm_mapping import (GUIDE_TYPES, LiveRequest, TrtLlmOptions, cache_salt_id, cached_tokens, closing_outputs,
                             embedding_bias, engine_config, engine_output, engine_world_size, executor_worker,
                             extra_ids, guided_decoding_vocab, prompt_table, refusal, request_kwargs,
                             sampling_kwargs, stats_from_iteration, tokens_per_block, within_build)

log = logging.getLogger(__name__)

_POLL = timedelta(milliseconds=50)      # await_responses timeout: how quickly shutdown is noticed
_STATS_EVERY_S = 0.5


def _import_executor():
    try:
        from tensorrt_llm.bindings import executor
    except ImportError as exc:
        raise ServerError("engine 'tensorrt_llm' needs TensorRT-LLM, which is not installed here "
                          f"({exc}); use NVIDIA's Triton + TensorRT-LLM container (Dockerfile) or "
                          "engine=reference") from exc
    return executor


class TrtLlmEngine:
    """An Engine (protocol.py) over the Executor; one thread turns its responses into EngineOutputs."""

    supports_choices = True   # n: the Executor's num_return_sequences, one final output per choice
    stats: EngineStats

    def __init__(self, options: TrtLlmOptions, config: CheckpointConfig, on_output: OnOutput):
        self._tle = _import_executor()
        self._built = engine_config(options.engine_dir)
        self._vocab_size = int(self._built.get("pretrained_config", {}).get("vocab_size") or config.vocab_size)
        self._block_tokens = tokens_per_block(self._built)
        options = within_build(options, self._built)
        self.options = options
        self.config = config
        self.on_output = on_output
        self.stats = EngineStats()
        self._live: dict[int, LiveRequest] = {}           # executor request id -> request
        self._by_key: dict[str, int] = {}           # our request id -> executor request id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        executor_config = self._executor_config()
        self.executor_guided = executor_config.guided_decoding_config is not None
        self.executor = self._tle.Executor(Path(options.engine_dir), self._tle.ModelType.DECODER_ONLY, executor_config)
        self._thread = threading.Thread(target=self._loop, name="trtllm-responses", daemon=True)

    def _executor_config(self):
        tle, opts = self._tle, self.options
        kv = tle.KvCacheConfig(enable_block_reuse=opts.enable_kv_cache_reuse,
                               free_gpu_memory_fraction=opts.kv_cache_free_gpu_memory_fraction)
        kwargs = {"max_beam_width": 1, "kv_cache_config": kv, "enable_chunked_context": opts.enable_chunked_context,
                  "max_batch_size": opts.max_batch_size, "max_num_tokens": opts.max_num_tokens,
                  "guided_decoding_config": self._guided_config()}
        world = engine_world_size(self._built)
        if world > 1:
            # Orchestrator mode: this process spawns one MPI worker per GPU, so tritonserver needs no mpirun.
            import tensorrt_llm

            worker = executor_worker(opts.executor_worker_path, Path(tensorrt_llm.__file__).parent)
            kwargs["parallel_config"] = tle.ParallelConfig(
                tle.CommunicationType.MPI, tle.CommunicationMode.ORCHESTRATOR, device_ids=list(range(world)),
                orchestrator_config=tle.OrchestratorConfig(True, str(worker)))
        return tle.ExecutorConfig(**{k: v for k, v in kwargs.items() if v is not None})

    def _guided_config(self):
        """xgrammar over the checkpoint's tokenizer, as TensorRT-LLM's Triton backend configures it from its
        tokenizer-info file; None (guided requests refused) when it is off or there is no tokenizer.json."""
        vocab = guided_decoding_vocab(self.config.path) if self.options.enable_guided_decoding else None
        if vocab is None:
            if self.options.enable_guided_decoding:
                log.warning("no tokenizer.json in %s: guided decoding is off", self.config.path)
            return None
        tle = self._tle
        return tle.GuidedDecodingConfig(tle.GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR,
                                        encoded_vocab=vocab[0], tokenizer_str=vocab[1],
                                        stop_token_ids=list(self.config.eos_token_ids))

    def start(self) -> "TrtLlmEngine":
        self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        """Raises ClientError (the llm stage answers 400) for settings this runtime cannot honour."""
        params = request.sampling
        refused = refusal(params, vocab_size=self._vocab_size, guided=self.executor_guided)
        if refused is not None:
            raise refused
        steps = self.options.max_num_tokens
        if not self.options.enable_chunked_context and steps and len(request.prompt_ids) > steps:
            # Without chunked context a prompt must fit one step; the Executor would refuse it less clearly.
            self._fail_alone(request, f"the prompt is {len(request.prompt_ids)} tokens; without chunked context "
                                      f"this engine takes at most {steps} (max_num_tokens)")
            return
        try:
            executor_request = self._request(request)
            with self._lock:   # held across enqueue so the response thread always finds the id
                key = self.executor.enqueue_request(executor_request)
                self._live[key] = LiveRequest(request.request_id, len(request.prompt_ids), params)
                self._by_key[request.request_id] = key
        except Exception as exc:   # a request the Executor refuses fails alone
            log.exception("enqueue of %s failed", request.request_id)
            self._fail_alone(request, f"tensorrt_llm refused the request: {exc}")

    def _fail_alone(self, request: GenerationRequest, error: str) -> None:
        """A final "error" output for each of the request's n choices, before it reached the Executor."""
        for out in closing_outputs(LiveRequest(request.request_id, len(request.prompt_ids), request.sampling),
                                   "error", error):
            self.on_output(out)

    def _request(self, request: GenerationRequest):
        tle, params = self._tle, request.sampling
        ids = np.asarray(request.prompt_ids, np.int64)
        scalars = request_kwargs(params)
        output_config = tle.OutputConfig(return_log_probs=scalars.pop("return_log_probs"),
                                         exclude_input_from_output=True,
                                         return_perf_metrics=self.options.enable_kv_cache_reuse)
        table = prompt_table(ids, request.prompt_table, self.config.vocab_size)
        tuning = None
        if table is not None:
            tuning_args = [self._table_tensor(table)]
            if self.options.enable_kv_cache_reuse:
                tuning_args.append(extra_ids(ids, request.prompt_extra_ids, table, self.config.vocab_size))
            tuning = tle.PromptTuningConfig(*tuning_args)
        optional = {"prompt_tuning_config": tuning, "cache_salt_id": cache_salt_id(request.cache_salt)}
        bias = embedding_bias(params, self._vocab_size)
        if bias is not None:
            import torch

            optional["embedding_bias"] = torch.from_numpy(bias)
        if params.guide_kind is not None:
            guide_type = getattr(tle.GuidedDecodingParams.GuideType, GUIDE_TYPES[params.guide_kind])
            optional["guided_decoding_params"] = tle.GuidedDecodingParams(guide_type, guide=params.guide)
        sampling = sampling_kwargs(params, random_seed=secrets.randbits(63))
        return tle.Request(ids.tolist(), sampling_config=tle.SamplingConfig(**sampling),
                           output_config=output_config,
                           **{k: v for k, v in {**scalars, **optional}.items() if v is not None})

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
            self.executor.cancel_request(key)   # a final response follows for each sequence, CANCELLED

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.executor.shutdown()
        with self._lock:   # whatever was still running gets its final response rather than silence
            live, self._live, self._by_key = list(self._live.values()), {}, {}
        for request in live:
            for out in closing_outputs(request, "error", "the llm engine shut down"):
                self.on_output(out)

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
            for out in closing_outputs(live, "error", error):
                self.on_output(out)

    def _deliver(self, response) -> None:
        with self._lock:
            live = self._live.get(response.request_id)
        if live is None:
            return
        if response.has_error():   # ends every sequence; a cancelled request the Executor answers so is cancelled
            outs = closing_outputs(live, "cancelled" if live.cancelled else "error",
                                   None if live.cancelled else response.error_msg)
            request_final = True
        else:
            result = response.result
            reasons = getattr(result, "finish_reasons", None) or []
            log_probs = result.log_probs[0] if result.log_probs else None
            if not live.cached_tokens:
                live.cached_tokens = cached_tokens(result, self._block_tokens, live.prompt_len)
            request_final = bool(result.is_final)
            outs = [engine_output(live, list(result.output_token_ids[0]),
                                  final=bool(getattr(result, "is_sequence_final", False)) or request_final,
                                  reason_name=reasons[0].name if reasons else None, log_probs=log_probs,
                                  sequence_index=int(getattr(result, "sequence_index", 0)))]
        if request_final:
            with self._lock:
                self._live.pop(response.request_id, None)
                self._by_key.pop(live.request_id, None)
        for out in outs:
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
