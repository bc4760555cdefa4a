"""The vision encoder behind one call, on the runtime a stage config names.

    pytorch      nanovl.core.vision on `device` (CPU or CUDA) in `dtype`: the reference, and the default
    onnxruntime  the ONNX graph `make engine` exports (nanovl.core.vision_export), on CPU or CUDA
    tensorrt     the TensorRT engine `make engine VISION=tensorrt` builds from that graph (GPU only)

Each takes tiles uint8 [n, S, S, 3] (numpy) and returns float32 [n, tokens_per_tile, llm_hidden] (numpy).
onnxruntime and tensorrt are imported only when selected.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .checkpoint import CheckpointConfig
from .errors import ServerError

log = logging.getLogger(__name__)
ENGINES = ("pytorch", "onnxruntime", "tensorrt")
# Graph input and output names, shared by the exporter and the runtimes.
TILES, EMBEDDINGS = "tiles", "embeddings"


class VisionEngine(Protocol):
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """tiles: uint8 [n, S, S, 3] -> float32 [n, tokens_per_tile, llm_hidden]"""


@dataclass(frozen=True)
class VisionSettings:
    """The vision_encoder stage's parameters (config.pbtxt `parameters`), with their defaults in one place."""

    vision_engine: str = "pytorch"
    vision_engine_path: str = ""   # onnxruntime: the .onnx file; tensorrt: the .plan file
    device: str = "cpu"
    dtype: str | None = None       # pytorch only; None: the checkpoint's torch_dtype
    torch_threads: int = 1         # CPU: intra-op threads of torch or onnxruntime
    # Embeddings of recent images by content key (nanovl.core.image_cache), least recently used evicted past
    # this many bytes; 0 = off. One 13-tile image of the real model is 13 x 256 x 4096 float32: 52 MiB.
    image_embedding_cache_bytes: int = 1 << 30



class TorchVision:
    def __init__(self, config: CheckpointConfig, settings: VisionSettings):
        import torch

        from .vision import load_vision

        if settings.device == "cpu":
            torch.set_num_threads(settings.torch_threads)
        self.encoder = load_vision(config, dtype=settings.dtype, device=settings.device)
        self.device = self.encoder.mlp1[1].weight.device

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        return self.encoder(torch.from_numpy(tiles).to(self.device)).float().cpu().numpy()


class OnnxVision:
    def __init__(self, settings: VisionSettings):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.torch_threads
        providers = ["CUDAExecutionProvider"] if settings.device.startswith("cuda") else []
        self.session = onnxruntime.InferenceSession(_engine_file(settings, ".onnx"), options,
                                                    providers=providers + ["CPUExecutionProvider"])

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.session.run([EMBEDDINGS], {TILES: tiles.astype(np.float32)})[0].astype(np.float32, copy=False)


def cuda_device(torch, name: str):
    """The CUDA device a stage parameter names, with its index: torch.cuda.set_device refuses a bare "cuda".
    "cpu" (the stages' default) means the current CUDA device, since TensorRT runs only there."""
    device = torch.device(name if name.startswith("cuda") else "cuda")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


_TRT_LOGGER = None


def trt_logger(trt):
    """One TensorRT logger a process: the build and the check of `make engine` both run in one."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


class TensorRTVision:
    """A TensorRT engine with a dynamic tile batch; a batch above its profile's maximum runs in chunks."""

    def __init__(self, settings: VisionSettings):
        plan = Path(_engine_file(settings, ".plan"))
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ServerError(f"vision_engine tensorrt needs TensorRT, which is not installed here ({exc}); use "
                              "NVIDIA's Triton + TensorRT-LLM container (Dockerfile)") from exc
        import torch

        self.torch = torch
        self.device = cuda_device(torch, settings.device)
        torch.cuda.set_device(self.device)   # the engine deserializes onto the current device
        self.engine = trt.Runtime(trt_logger(trt)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ServerError(f"{settings.vision_engine_path}: not a TensorRT engine this TensorRT can load")
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        found = {name: self.engine.get_tensor_dtype(name) for name in (TILES, EMBEDDINGS)}
        if any(dtype not in dtypes for dtype in found.values()):
            raise ServerError(f"{plan}: tensor types {found}; the vision stage feeds and reads float tensors")
        # The export's graph takes float32 pixels; a graph exported in another float type gets its own.
        self.in_dtype, self.out_dtype = dtypes[found[TILES]], dtypes[found[EMBEDDINGS]]
        # Activation memory for the profile's largest batch is taken now, beside the LLM's KV cache.
        log.info("vision TensorRT engine %s: %.2f GiB of activation memory", plan,
                 self.engine.device_memory_size_v2 / 2**30)
        self.context = self.engine.create_execution_context()
        # A stream of its own: TensorRT syncs (and warns) when it is handed the default stream.
        self.stream = torch.cuda.Stream(self.device)
        self.max_tiles = self.engine.get_tensor_profile_shape(TILES, 0)[2][0]

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if not len(tiles):
            raise ServerError("the vision engine was called with no tiles")
        return np.concatenate([self._run(tiles[i:i + self.max_tiles]) for i in range(0, len(tiles), self.max_tiles)])

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            # uint8 over the bus, then float on the device: the graph takes float pixels (vision_export).
            x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).to(self.in_dtype)
            if not self.context.set_input_shape(TILES, tuple(x.shape)):
                raise ServerError(f"the TensorRT vision engine refused input shape {tuple(x.shape)}")
            shape = tuple(self.context.get_tensor_shape(EMBEDDINGS))
            out = torch.empty(shape, dtype=self.out_dtype, device=self.device)
            if not (self.context.set_tensor_address(TILES, x.data_ptr())
                    and self.context.set_tensor_address(EMBEDDINGS, out.data_ptr())):
                raise ServerError("the TensorRT vision engine refused a tensor address")
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ServerError("the TensorRT vision engine failed to run")
            result = out.float().cpu()   # waits for the stream
        return result.numpy()


def _engine_file(settings: VisionSettings, suffix: str) -> str:
    path = Path(settings.vision_engine_path)
    if not settings.vision_engine_path or not path.is_file():
        raise ServerError(f"vision_engine {settings.vision_engine} needs parameter vision_engine_path naming its "
                          f"{suffix} file (`make engine VISION=...` writes it); got {str(path)!r}")
    return str(path)


def load_vision_engine(config: CheckpointConfig, settings: VisionSettings) -> VisionEngine:
    if settings.vision_engine == "pytorch":
        return TorchVision(config, settings)
    if settings.vision_engine == "onnxruntime":
        return OnnxVision(settings)
    if settings.vision_engine == "tensorrt":
        return TensorRTVision(settings)
    raise ServerError(f"vision_engine {settings.vision_engine!r} is not available (choose from {', '.join(ENGINES)})")
