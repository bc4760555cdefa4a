"""A stand-in for `tensorrt_llm.bindings.executor` (TensorRT-LLM 0.14) to run TrtLlmEngine's own code on CPU.

It is strict where our code could be wrong: every constructor takes only the keyword names of the 0.14
bindings (cpp/tensorrt_llm/pybind/executor/bindings.cpp at v0.14.0, as TensorRT-LLM's Triton backend calls
them), Request needs max_tokens, and a prompt with ids >= vocab_size needs a prompt table in the engine's
dtype with the rows they index. Its "model" is a script: it streams the prompt's ordinary tokens back, one a
step, and behaves as the 0.14 Executor does with them: the end id ends the request and is not returned, a stop
word ends it and is returned, max_tokens ends it with LENGTH; streamed results carry only the new tokens and
cumulative log-probs; there is no CANCELLED finish reason.
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
        raise TypeError(f"{name}() got unexpected keyword arguments {sorted(unknown)} (not in TensorRT-LLM 0.14)")
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


class SamplingConfig:
    # 0.14 also takes the deprecated aliases random_seed and min_length (renamed in 0.13); they are left out so
    # that our code must use the current names.
    ALLOWED = {"beam_width", "top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "seed", "temperature",
               "min_tokens", "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
               "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size"}

    def __init__(self, beam_width: int = 1, **kwargs):
        self.beam_width = beam_width
        self.__dict__.update(_keywords("SamplingConfig", self.ALLOWED, kwargs))


class OutputConfig:
    def __init__(self, return_log_probs=False, return_context_logits=False, return_generation_logits=False,
                 exclude_input_from_output=False, return_encoder_output=False):
        self.return_log_probs = return_log_probs
        self.exclude_input_from_output = exclude_input_from_output


class PromptTuningConfig:
    def __init__(self, embedding_table, input_token_extra_ids=None):
        self.embedding_table = embedding_table
        self.input_token_extra_ids = input_token_extra_ids


class KvCacheConfig:
    ALLOWED = {"enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length",
               "free_gpu_memory_fraction", "host_cache_size", "onboard_blocks", "cross_kv_cache_fraction"}

    def __init__(self, **kwargs):
        self.__dict__.update(_keywords("KvCacheConfig", self.ALLOWED, kwargs))


class OrchestratorConfig:
    def __init__(self, is_orchestrator=True, worker_executable_path=""):
        self.is_orchestrator, self.worker_executable_path = is_orchestrator, worker_executable_path


class ParallelConfig:
    def __init__(self, communication_type=CommunicationType.MPI, communication_mode=CommunicationMode.LEADER,
                 device_ids=None, participant_ids=None, orchestrator_config=None):
        self.communication_mode, self.device_ids = communication_mode, device_ids
        self.orchestrator_config = orchestrator_config


class ExecutorConfig:
    ALLOWED = {"max_beam_width", "scheduler_config", "kv_cache_config", "enable_chunked_context", "normalize_log_probs",
               "iter_stats_max_iterations", "request_stats_max_iterations", "batching_type", "max_batch_size",
               "max_num_tokens", "parallel_config", "peft_cache_config", "logits_post_processor_config",
               "decoding_config", "gpu_weights_percent", "max_queue_size", "extended_runtime_perf_knob_config",
               "debug_config", "recv_poll_period_ms", "max_seq_idle_microseconds"}

    def __init__(self, **kwargs):
        self.__dict__.update(_keywords("ExecutorConfig", self.ALLOWED, kwargs))


class Request:
    ALLOWED = {"max_tokens", "max_new_tokens", "streaming", "sampling_config", "output_config", "end_id", "pad_id",
               "position_ids", "bad_words", "stop_words", "embedding_bias", "external_draft_tokens_config",
               "prompt_tuning_config", "lora_config", "lookahead_config", "logits_post_processor_name",
               "encoder_input_token_ids", "client_id", "return_all_generated_tokens", "priority", "type",
               "context_phase_params", "encoder_input_features", "encoder_output_length", "num_return_sequences"}

    def __init__(self, input_token_ids, **kwargs):
        _keywords("Request", self.ALLOWED, kwargs)
        if kwargs.get("max_tokens") is None:
            raise ValueError("Request needs max_tokens")
        self.input_token_ids = list(input_token_ids)
        self.max_tokens = kwargs["max_tokens"]
        self.streaming = kwargs.get("streaming", False)
        self.sampling_config = kwargs.get("sampling_config") or SamplingConfig()
        self.output_config = kwargs.get("output_config") or OutputConfig()
        self.end_id, self.stop_words = kwargs.get("end_id"), kwargs.get("stop_words") or []
        self.prompt_tuning_config = kwargs.get("prompt_tuning_config")


@dataclass
class Result:
    output_token_ids: list
    is_final: bool
    finish_reasons: list
    log_probs: list | None = None


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
    made: list[int] = field(default_factory=list)
    cancelled: bool = False


class Executor:
    """One token per running request per await_responses() call, as one engine step."""

    vocab_size = 0          # set by the test: ids at or above it index the prompt table
    table_dtype = None      # torch dtype the engine's weights have
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
        self.lock = threading.Lock()
        self.is_shut_down = False
        Executor.instances.append(self)

    def enqueue_request(self, request: Request) -> int:
        if not request.input_token_ids:
            raise ValueError("empty input_token_ids")
        fake = [t for t in request.input_token_ids if t >= self.vocab_size]
        if fake:
            table = getattr(request.prompt_tuning_config, "embedding_table", None)
            if table is None or table.dtype != self.table_dtype or max(fake) - self.vocab_size >= table.shape[0]:
                raise ValueError("prompt ids >= vocab_size need a prompt table in the engine's dtype")
        with self.lock:
            key = len(self.enqueued) + 1
            self.enqueued.append(request)
            self.requests[key] = _Running(request, [t for t in request.input_token_ids if t < self.vocab_size])
        return key

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
        responses = [self._step(key, run) for key, run in running]
        with self.lock:
            for response in responses:
                if response.error_msg or response.result.is_final:
                    self.requests.pop(response.request_id, None)
        return responses

    def _step(self, key: int, run: _Running) -> Response:
        request = run.request
        if self.fail_token in request.input_token_ids:
            return Response(key, error_msg="injected executor failure")
        if self.garble_token in request.input_token_ids:
            return Response(key, Result([], False, []))
        if run.cancelled and self.error_on_cancel:
            return Response(key, error_msg="request cancelled")
        if run.cancelled:
            return Response(key, Result([[]], True, [FinishReason.NOT_FINISHED], self._logprobs(run)))
        token = run.script[len(run.made) % len(run.script)]
        if token == request.end_id:   # the end id ends the request and is not returned
            return Response(key, Result([[]], True, [FinishReason.END_ID], self._logprobs(run)))
        run.made.append(token)
        reason = FinishReason.NOT_FINISHED
        if [token] in request.stop_words:
            reason = FinishReason.STOP_WORDS
        elif len(run.made) >= request.max_tokens:
            reason = FinishReason.LENGTH
        final = reason is not FinishReason.NOT_FINISHED
        return Response(key, Result([[token]], final, [reason], self._logprobs(run)))

    @staticmethod
    def _logprobs(run: _Running):
        # Cumulative over the whole output, beam first, as 0.14 returns them in streaming.
        return [[-0.5 - i for i in range(len(run.made))]] if run.request.output_config.return_log_probs else None

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
