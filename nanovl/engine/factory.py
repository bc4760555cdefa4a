"""Builds the engine a stage config names. TensorRT-LLM is imported only when selected."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checkpoint import CheckpointConfig
from ..core.errors import ServerError
from .protocol import Engine, OnOutput

ENGINES = ("reference", "tensorrt_llm")


@dataclass(frozen=True)
class EngineSettings:
    """The llm stage's engine parameters (config.pbtxt `parameters`, read by nanovl.serving.parameters), with their
    defaults in one place."""

    engine: str = "reference"
    device: str = "cpu"
    dtype: str | None = None           # None: the checkpoint's torch_dtype
    max_running: int = 32              # sequences in the running batch
    max_step_tokens: int = 8192        # prompt + decode tokens one step may run (TensorRT-LLM's max_num_tokens)
    kv_cache_tokens: int = 131072      # paged KV-cache size in tokens
    block_size: int = 16
    # CPU only. One intra-op thread: the stages share the cores with each other, and OpenMP's spin-waits
    # under contention made a small matmul 100x slower with 2 threads than with 1 (docs/perf.md).
    torch_threads: int = 1
    # The llm stage sends each stream at most one response per interval, carrying every token made meanwhile:
    # fewer, fuller responses through the ensemble (docs/perf.md). 0 = a response per engine step.
    stream_interval_ms: float = 50.0
    # Both engines: KV-cache blocks reused across requests (prefix caching), keyed by token ids and, at image
    # positions, by the image's content hash; off only to compare (a hit never changes an answer, tested).
    enable_kv_cache_reuse: bool = True
    # tensorrt_llm only: the trtllm-build output `make engine` wrote, the share of free GPU memory the
    # Executor's paged KV cache takes, chunked prefill, KV-cache block reuse across requests (images told apart
    # by their extra ids, tenants by their cache salt) and xgrammar guided decoding for structured output.
    engine_dir: str = ""
    kv_cache_free_gpu_memory_fraction: float = 0.9
    enable_chunked_context: bool = True
    enable_guided_decoding: bool = True
    executor_worker_path: str = ""   # tensor parallelism: "" finds TensorRT-LLM's executorWorker


def build_engine(settings: EngineSettings, config: CheckpointConfig, on_output: OnOutput) -> Engine:
    """The engine the settings name, started."""
    if settings.engine == "reference":
        import torch

        from .reference import ReferenceEngine
        from .runner import ModelRunner

        if settings.device == "cpu":
            torch.set_num_threads(settings.torch_threads)
        runner = ModelRunner(config, kv_cache_tokens=settings.kv_cache_tokens, block_size=settings.block_size,
                             dtype=settings.dtype, device=settings.device,
                             prefix_caching=settings.enable_kv_cache_reuse)
        return ReferenceEngine(runner, on_output, max_running=settings.max_running,
                               max_step_tokens=settings.max_step_tokens).start()
    if settings.engine == "tensorrt_llm":
        from pathlib import Path

        from .trtllm import TrtLlmEngine
        from .trtllm_mapping import TrtLlmOptions

        if not settings.engine_dir:
            raise ServerError("engine tensorrt_llm needs parameter engine_dir (the output of `make engine`)")
        options = TrtLlmOptions(Path(settings.engine_dir), max_batch_size=settings.max_running,
                                max_num_tokens=settings.max_step_tokens,
                                kv_cache_free_gpu_memory_fraction=settings.kv_cache_free_gpu_memory_fraction,
                                enable_chunked_context=settings.enable_chunked_context,
                                enable_kv_cache_reuse=settings.enable_kv_cache_reuse,
                                enable_guided_decoding=settings.enable_guided_decoding,
                                executor_worker_path=settings.executor_worker_path)
        return TrtLlmEngine(options, config, on_output).start()
    raise ServerError(f"engine {settings.engine!r} is not available (choose from {', '.join(ENGINES)})")
