"""A stand-in for `tensorrt_llm.bindings.executor` (TensorRT-LLM 1.2.1) to run TrtLlmEngine's own code on CPU.

It is strict where our code could be wrong: every constructor takes only the keyword names of the 1.2 bindings
(cpp/tensorrt_llm/nanobind/executor/{request,executorConfig}.cpp; the v1.2.1 tag could not be checked out here,
so they were read at the stored commits of the 1.2 line that carry Request's cache_salt_id and
GuidedDecodingConfig's LLGUIDANCE backend), Request needs max_tokens, a prompt with ids >= vocab_size needs a
prompt table in the engine's dtype with the rows they index, guided decoding needs the executor's
GuidedDecodingConfig, and an embedding bias must be a float32 vector of the vocabulary's size.

Its "model" is a script: it streams the prompt's ordinary tokens back, one a step (choice i starts i tokens
later), and behaves as the 1.2 Executor does with them: the end id ends a sequence and is not returned, a stop
word ends it and is returned, max_tokens ends it with LENGTH, a cancel ends it with CANCELLED; streamed results
carry only the new tokens of one sequence (sequence_index) and cumulative log-probs. A bias of 50 or more forces
its token. With block reuse on, prompts share KV blocks of `tokens_per_block` (token, extra id) pairs under the
same cache salt, reported in the perf metrics' kv_cache_metrics.num_reused_blocks.
"""
from __future__ import annotations

import enum
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path


def _keywords(name: str, allowed: set[str], kwargs: dict) -> dict:
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {sorted(unknown)} (not in TensorRT-LLM 1.2.1)")
    return kwargs


class ModelType(enum.Enum):
    DECODER_ONLY = 0


class CommunicationType(enum.Enum):
    MPI = 0


class CommunicationMode(enum.Enum):
    LEADER = 0
    ORCHESTRATOR = 1


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


class SamplingConfig:
    ALLOWED = {"top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "seed", "temperature", "min_tokens",
               "beam_search_diversity_rate", "repetition_penalty", "presence_penalty", "frequency_penalty",
               "length_penalty", "early_stopping", "no_repeat_ngram_size", "num_return_sequences", "min_p",
               "beam_width_array"}

    def __init__(self, beam_width: int = 1, **kwargs):
        self.beam_width, self.num_return_sequences = beam_width, None
        self.__dict__.update(_keywords("SamplingConfig", self.ALLOWED, kwargs))


class OutputConfig:
    def __init__(self, return_log_probs=False, return_context_logits=False, return_generation_logits=False,
                 exclude_input_from_output=False, return_encoder_output=False, return_perf_metrics=False,
                 additional_model_outputs=None):
        self.return_log_probs = return_log_probs
        self.exclude_input_from_output = exclude_input_from_output
        self.return_perf_metrics = return_perf_metrics


class PromptTuningConfig:
    def __init__(self, embedding_table, input_token_extra_ids=None):
        self.embedding_table = embedding_table
        self.input_token_extra_ids = input_token_extra_ids


class KvCacheConfig:
    ALLOWED = {"enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length",
               "free_gpu_memory_fraction", "host_cache_size", "onboard_blocks", "cross_kv_cache_fraction",
               "secondary_offload_min_priority", "event_buffer_max_size", "enable_partial_reuse",
               "copy_on_partial_reuse", "use_uvm", "attention_dp_events_gather_period_ms", "runtime_defaults",
               "max_gpu_total_bytes"}

    def __init__(self, **kwargs):
        self.enable_block_reuse = True   # 1.x turned reuse on by default
        self.__dict__.update(_keywords("KvCacheConfig", self.ALLOWED, kwargs))


class GuidedDecodingConfig:
    class GuidedDecodingBackend(enum.Enum):
        XGRAMMAR = 0
        LLGUIDANCE = 1

    def __init__(self, backend, encoded_vocab=None, tokenizer_str=None, stop_token_ids=None):
        if not isinstance(backend, GuidedDecodingConfig.GuidedDecodingBackend):
            raise TypeError("GuidedDecodingConfig(backend: GuidedDecodingBackend, ...)")
        self.backend, self.encoded_vocab = backend, encoded_vocab
        self.tokenizer_str, self.stop_token_ids = tokenizer_str, stop_token_ids


class GuidedDecodingParams:
    class GuideType(enum.Enum):
        JSON = 0
        JSON_SCHEMA = 1
        REGEX = 2
        EBNF_GRAMMAR = 3
        STRUCTURAL_TAG = 4

    def __init__(self, guide_type, guide=None):
        if not isinstance(guide_type, GuidedDecodingParams.GuideType):
            raise TypeError("GuidedDecodingParams(guide_type: GuideType, guide: str | None)")
        self.guide_type, self.guide = guide_type, guide


class OrchestratorConfig:
    def __init__(self, is_orchestrator=True, worker_executable_path="", orch_leader_comm=None, spawn_processes=True):
        self.is_orchestrator, self.worker_executable_path = is_orchestrator, worker_executable_path


class ParallelConfig:
    def __init__(self, communication_type=CommunicationType.MPI, communication_mode=CommunicationMode.LEADER,
                 device_ids=None, participant_ids=None, orchestrator_config=None, num_nodes=None):
        self.communication_mode, self.device_ids = communication_mode, device_ids
        self.orchestrator_config = orchestrator_config


class ExecutorConfig:
    # mm_embedding_offloading is the keyword of what the class calls prompt_table_offloading.
    ALLOWED = {"max_beam_width", "scheduler_config", "kv_cache_config", "enable_chunked_context", "normalize_log_probs",
               "iter_stats_max_iterations", "request_stats_max_iterations", "batching_type", "max_batch_size",
               "max_num_tokens", "parallel_config", "peft_cache_config", "logits_post_processor_config",
               "decoding_config", "use_gpu_direct_storage", "gpu_weights_percent", "max_queue_size",
               "extended_runtime_perf_knob_config", "debug_config", "recv_poll_period_ms", "max_seq_idle_microseconds",
               "spec_dec_config", "guided_decoding_config", "additional_model_outputs", "cache_transceiver_config",
               "gather_generation_logits", "mm_embedding_offloading", "enable_trt_overlap",
               "fail_fast_on_attention_window_too_large"}

    def __init__(self, **kwargs):
        self.guided_decoding_config = None
        self.kv_cache_config = KvCacheConfig()
        self.__dict__.update(_keywords("ExecutorConfig", self.ALLOWED, kwargs))


class Request:
    ALLOWED = {"streaming", "sampling_config", "output_config", "end_id", "pad_id", "position_ids", "bad_words",
               "stop_words", "embedding_bias", "external_draft_tokens_config", "prompt_tuning_config",
               "multimodal_input", "multimodal_embedding", "mrope_config", "lora_config", "lookahead_config",
               "kv_cache_retention_config", "logits_post_processor_name", "logits_post_processor",
               "encoder_input_token_ids", "client_id", "return_all_generated_tokens", "priority", "type",
               "context_phase_params", "encoder_input_features", "encoder_output_length", "cross_attention_mask",
               "num_return_sequences", "eagle_config", "skip_cross_attn_blocks", "guided_decoding_params",
               "language_adapter_uid", "allotted_time_ms", "cache_salt_id"}

    def __init__(self, input_token_ids, max_tokens=None, **kwargs):
        _keywords("Request", self.ALLOWED, kwargs)
        if max_tokens is None:
            raise TypeError("Request(input_token_ids, max_tokens, *, ...) needs max_tokens")
        self.input_token_ids, self.max_tokens = list(input_token_ids), max_tokens
        self.streaming = kwargs.get("streaming", False)
        self.sampling_config = kwargs.get("sampling_config") or SamplingConfig()
        self.output_config = kwargs.get("output_config") or OutputConfig()
        self.end_id, self.stop_words = kwargs.get("end_id"), kwargs.get("stop_words") or []
        self.prompt_tuning_config = kwargs.get("prompt_tuning_config")
        self.embedding_bias = kwargs.get("embedding_bias")
        self.guided_decoding_params = kwargs.get("guided_decoding_params")
        self.cache_salt_id = kwargs.get("cache_salt_id")


@dataclass
class KvCacheMetrics:
    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass
class RequestPerfMetrics:
    kv_cache_metrics: KvCacheMetrics


@dataclass
class Result:
    output_token_ids: list
    is_final: bool
    finish_reasons: list
    log_probs: list | None = None
    sequence_index: int = 0
    is_sequence_final: bool = False
    request_perf_metrics: RequestPerfMetrics | None = None


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


@dataclass
class _Running:
    request: Request
    script: list[int]
    reused_blocks: int = 0
    made: dict[int, list[int]] = field(default_factory=dict)   # sequence index -> its tokens
    done: set[int] = field(default_factory=set)
    cancelled: bool = False


class Executor:
    """One token per running sequence per await_responses() call, as one engine step."""

    vocab_size = 0          # set by the test: ids at or above it index the prompt table
    table_dtype = None      # torch dtype the engine's weights have
    tokens_per_block = 4    # the KV block size the stand-in reuses by
    fail_token = -1         # a prompt holding it gets an error response instead of tokens
    garble_token = -1       # a prompt holding it gets a result with no beams, which nothing can read
    error_on_cancel = False  # answer a cancelled request with an error response, not a final result
    step_seconds = 0.0      # how long a step takes, for a test that must see requests running
    instances: list["Executor"] = []

    def __init__(self, model_path, model_type, executor_config):
        if not isinstance(model_path, Path) or model_type is not ModelType.DECODER_ONLY:
            raise TypeError("Executor(model_path: Path, ModelType, ExecutorConfig)")
        self.config = executor_config
        self.requests: dict[int, _Running] = {}
        self.enqueued: list[Request] = []
        self.cached_blocks: set[tuple] = set()
        self.lock = threading.Lock()
        self.is_shut_down = False
        Executor.instances.append(self)

    def enqueue_request(self, request: Request) -> int:
        if not request.input_token_ids:
            raise ValueError("empty input_token_ids")
        self._check(request)
        reused = self._reuse(request)
        with self.lock:
            key = len(self.enqueued) + 1
            self.enqueued.append(request)
            self.requests[key] = _Running(request, [t for t in request.input_token_ids if t < self.vocab_size],
                                          reused)
        return key

    def _check(self, request: Request) -> None:
        fake = [t for t in request.input_token_ids if t >= self.vocab_size]
        if fake:
            table = getattr(request.prompt_tuning_config, "embedding_table", None)
            if table is None or table.dtype != self.table_dtype or max(fake) - self.vocab_size >= table.shape[0]:
                raise ValueError("prompt ids >= vocab_size need a prompt table in the engine's dtype")
        if request.guided_decoding_params is not None and self.config.guided_decoding_config is None:
            raise ValueError("guided decoding is not enabled: the executor has no GuidedDecodingConfig")
        bias = request.embedding_bias
        if bias is not None and (str(bias.dtype) != "torch.float32" or tuple(bias.shape) != (self.vocab_size,)):
            raise ValueError(f"embedding_bias must be float32 [{self.vocab_size}], got {bias.dtype} "
                             f"{tuple(bias.shape)}")

    def _reuse(self, request: Request) -> int:
        """Full prompt blocks already cached (same tokens, extra ids and salt) -> how many; caches the rest."""
        if not self.config.kv_cache_config.enable_block_reuse:
            return 0
        extra = getattr(request.prompt_tuning_config, "input_token_extra_ids", None)
        pairs = list(zip(request.input_token_ids, extra or [0] * len(request.input_token_ids)))
        keys = [(request.cache_salt_id, tuple(pairs[:end]))
                for end in range(self.tokens_per_block, len(pairs) + 1, self.tokens_per_block)]
        with self.lock:
            reused = next((i for i, k in enumerate(keys) if k not in self.cached_blocks), len(keys))
            self.cached_blocks.update(keys)
        return reused

    def cancel_request(self, key: int) -> None:
        with self.lock:
            if key in self.requests:
                self.requests[key].cancelled = True

    def await_responses(self, timeout=None) -> list[Response]:
        with self.lock:
            running = list(self.requests.items())
        if not running:
            threading.Event().wait(timeout.total_seconds() if timeout else 0.01)
            return []
        if self.step_seconds:
            threading.Event().wait(self.step_seconds)
        responses = [r for key, run in running for r in self._step(key, run)]
        with self.lock:
            for response in responses:
                if response.error_msg or response.result.is_final:
                    self.requests.pop(response.request_id, None)
        return responses

    def _step(self, key: int, run: _Running) -> list[Response]:
        request = run.request
        if self.fail_token in request.input_token_ids:
            return [Response(key, error_msg="injected executor failure")]
        if self.garble_token in request.input_token_ids:
            return [Response(key, Result([], False, []))]
        if run.cancelled and self.error_on_cancel:
            return [Response(key, error_msg="request cancelled")]
        n = request.sampling_config.num_return_sequences or 1
        responses = []
        for index in (i for i in range(n) if i not in run.done):
            reason, tokens = self._next(run, index)
            if reason is not FinishReason.NOT_FINISHED:
                run.done.add(index)
            result = Result([tokens], len(run.done) == n, [reason], self._logprobs(run, index), index,
                            reason is not FinishReason.NOT_FINISHED, self._metrics(run))
            responses.append(Response(key, result))
        return responses

    def _next(self, run: _Running, index: int) -> tuple[FinishReason, list[int]]:
        request, made = run.request, run.made.setdefault(index, [])
        if run.cancelled:
            return FinishReason.CANCELLED, []
        token = run.script[(len(made) + index) % len(run.script)]
        bias = request.embedding_bias
        if bias is not None and float(bias.max()) >= 50:
            token = int(bias.argmax())
        if token == request.end_id:   # the end id ends the sequence and is not returned
            return FinishReason.END_ID, []
        made.append(token)
        if [token] in request.stop_words:
            return FinishReason.STOP_WORDS, [token]
        if len(made) >= request.max_tokens:
            return FinishReason.LENGTH, [token]
        return FinishReason.NOT_FINISHED, [token]

    def _metrics(self, run: _Running):
        if not run.request.output_config.return_perf_metrics:
            return None
        return RequestPerfMetrics(KvCacheMetrics(num_reused_blocks=run.reused_blocks))

    @staticmethod
    def _logprobs(run: _Running, index: int):
        # Cumulative over the sequence's whole output, as 1.2 returns them in streaming.
        made = run.made.get(index, [])
        return [[-0.5 - i for i in range(len(made))]] if run.request.output_config.return_log_probs else None

    def get_latest_iteration_stats(self):
        with self.lock:
            active = len(self.requests)
        if not active:
            return []   # an idle Executor runs no iterations
        kv = types.SimpleNamespace(max_num_blocks=100, used_num_blocks=10 * active)
        return [types.SimpleNamespace(num_active_requests=active, num_queued_requests=0, iter=len(self.enqueued),
                                      kv_cache_stats=kv)]

    def shutdown(self) -> None:
        self.is_shut_down = True


def install(monkeypatch) -> types.ModuleType:
    """Puts this module in place of tensorrt_llm, tensorrt_llm.bindings and tensorrt_llm.bindings.executor."""
    package = types.ModuleType("tensorrt_llm")
    package.__file__ = "/opt/fake/tensorrt_llm/__init__.py"
    bindings = types.ModuleType("tensorrt_llm.bindings")
    executor = sys.modules[__name__]
    package.bindings, bindings.executor = bindings, executor
    for name, module in (("tensorrt_llm", package), ("tensorrt_llm.bindings", bindings),
                         ("tensorrt_llm.bindings.executor", executor)):
        monkeypatch.setitem(sys.modules, name, module)
    Executor.instances = []
    return executor
