"""A stand-in for the `tensorrt` Python package (TensorRT 10.4, NVIDIA's 24.10 container) to run the vision
engine's build and runtime code on CPU, up to where the GPU takes over.

It is strict where our code could be wrong: only the TensorRT 10 names our code may use exist (no 8.x bindings
API, no execute_async_v2), create_network takes the 10.x flags (0: explicit batch is the only mode), a profile
must name the network's input with min <= opt <= max, set_input_shape refuses shapes outside the profile, an
output's shape is unknown (-1) until the input's is set, execute_async_v3 needs both tensor addresses and a
stream of its own (not the default stream, 0). Its "engine" is the ONNX graph it was built from, run by
onnxruntime: it reads the input from the address it was given and writes the output to the other, in the
engine's I/O types, so a wrong pointer, shape or dtype shows in the numbers.
"""
from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import sys
from pathlib import Path

import numpy as np


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    UINT8 = 5
    BF16 = 7


float32, float16, int32, uint8, bfloat16 = (DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.UINT8,
                                            DataType.BF16)
_ITEM_BYTES = {DataType.FLOAT: 4, DataType.HALF: 2, DataType.INT32: 4, DataType.UINT8: 1, DataType.BF16: 2}


class Logger:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity
    instances: list["Logger"] = []

    def __init__(self, min_severity: "Logger.Severity" = Severity.WARNING):
        if not isinstance(min_severity, Logger.Severity):
            raise TypeError("Logger(min_severity: tensorrt.Logger.Severity)")
        Logger.instances.append(self)


class BuilderFlag(enum.Enum):
    FP16 = 0
    BF16 = 17


class _Network:
    def __init__(self):
        self.onnx: str | None = None
        self.inputs: list[str] = []


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger):
        if not isinstance(network, _Network) or not isinstance(logger, Logger):
            raise TypeError("OnnxParser(network: INetworkDefinition, logger: ILogger)")
        self.network, self.errors = network, []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        if not isinstance(model, str):
            raise TypeError("parse_from_file(model: str)")
        try:
            graph = onnx.load(model, load_external_data=False).graph
        except Exception as exc:   # what TensorRT reports as a parser error
            self.errors.append(f"cannot read {model}: {exc}")
            return False
        self.network.onnx, self.network.inputs = model, [i.name for i in graph.input]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IOptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:   # noqa: A002 (TensorRT's own names)
        dims = [tuple(int(d) for d in s) for s in (min, opt, max)]
        if not all(len(d) == len(dims[0]) for d in dims) or not all(a <= b <= c for a, b, c in zip(*dims)):
            raise ValueError(f"profile shapes for {input} must have min <= opt <= max, got {dims}")
        self.shapes[input] = tuple(dims)


class IBuilderConfig:
    def __init__(self):
        self.flags: set[BuilderFlag] = set()
        self.profiles: list[IOptimizationProfile] = []

    def set_flag(self, flag: BuilderFlag) -> None:
        if not isinstance(flag, BuilderFlag):
            raise TypeError("set_flag(flag: tensorrt.BuilderFlag)")
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    built: list[dict] = []   # what each build was asked for

    def __init__(self, logger: Logger):
        if not isinstance(logger, Logger):
            raise TypeError("Builder(logger: ILogger)")

    def create_network(self, flags: int = 0) -> _Network:
        if flags != 0:   # kEXPLICIT_BATCH is deprecated and ignored in TensorRT 10
            raise ValueError("TensorRT 10 networks are explicit-batch; create_network takes flags 0")
        return _Network()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: _Network, config: IBuilderConfig):
        if network.onnx is None or len(config.profiles) != 1 or set(config.profiles[0].shapes) != set(network.inputs):
            return None   # TensorRT logs why and returns None
        plan = {"onnx": network.onnx, "profile": config.profiles[0].shapes,
                "flags": sorted(f.name for f in config.flags), "io": {"tiles": "FLOAT", "embeddings": "FLOAT"}}
        Builder.built.append(plan)
        return memoryview(plan_bytes(plan))   # IHostMemory: a buffer


def plan_bytes(plan: dict) -> bytes:
    return b"FAKEPLAN" + json.dumps(plan).encode()


class Runtime:
    def __init__(self, logger: Logger):
        if not isinstance(logger, Logger):
            raise TypeError("Runtime(logger: ILogger)")

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> "ICudaEngine | None":
        events.append("deserialize")
        data = bytes(serialized_engine)
        if not data.startswith(b"FAKEPLAN"):
            return None
        return ICudaEngine(json.loads(data[len(b"FAKEPLAN"):]))


class ICudaEngine:
    def __init__(self, plan: dict):
        import onnxruntime

        self.plan = plan
        self.session = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.runs: list[tuple] = []   # the input shape of each execution

    @property
    def device_memory_size_v2(self) -> int:
        return 1 << 20

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.plan["io"][name]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
        if profile_index != 0 or name not in self.plan["profile"]:
            raise ValueError(f"no profile {profile_index} for {name}")
        return [tuple(s) for s in self.plan["profile"][name]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(low) or not all(a <= b <= c for a, b, c in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.shapes:
            return self.shapes[name]
        if "tiles" not in self.shapes:
            return (-1, -1, -1)
        output = self.engine.session.get_outputs()[0]
        return (self.shapes["tiles"][0], *output.shape[1:])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int) or name not in self.engine.plan["io"]:
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int) or stream_handle == 0 or set(self.addresses) != {"tiles", "embeddings"}:
            return False
        shape = self.shapes["tiles"]
        tiles = _read(self.addresses["tiles"], shape, self.engine.get_tensor_dtype("tiles"))
        (embeddings,) = self.engine.session.run(None, {"tiles": tiles})
        _write(self.addresses["embeddings"], embeddings, self.engine.get_tensor_dtype("embeddings"))
        self.engine.runs.append(shape)
        return True


def _read(address: int, shape: tuple, dtype: DataType) -> np.ndarray:
    """The input at `address` in the engine's input type, as the float32 the graph takes."""
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * _ITEM_BYTES[dtype])).from_address(address)
    if dtype is DataType.FLOAT:
        values = np.frombuffer(raw, np.float32)
    elif dtype is DataType.HALF:
        values = np.frombuffer(raw, np.float16).astype(np.float32)
    elif dtype is DataType.BF16:
        values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        raise NotImplementedError(f"the stand-in reads float inputs, not {dtype}")
    return values.reshape(shape).copy()


def _write(address: int, values: np.ndarray, dtype: DataType) -> None:
    if dtype is DataType.FLOAT:
        data = np.ascontiguousarray(values, np.float32).tobytes()
    elif dtype is DataType.BF16:   # round to nearest even, as a bf16 output binding holds it
        bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
        data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    else:
        raise NotImplementedError(f"the stand-in writes float32 or bf16 outputs, not {dtype}")
    ctypes.memmove(address, data, len(data))


class _Stream:
    cuda_stream = 7   # a stream of its own: the stand-in refuses the default stream (0)

    def __init__(self, device):
        self.device = device


events: list = []   # "set_device" and "deserialize", in the order they happened


def cuda_on_cpu(setattr) -> None:
    """CUDA replaced by the CPU for TensorRTVision (device, stream, current device), with `setattr`
    (monkeypatch.setattr in a test, builtins.setattr in a process of its own)."""
    import torch

    from nanovl.core import vision_runtimes as vision_engines

    setattr(vision_engines, "cuda_device", lambda torch, name: torch.device("cpu"))
    setattr(torch.cuda, "set_device", lambda device: events.append("set_device"))
    setattr(torch.cuda, "Stream", _Stream)
    setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())


def install(monkeypatch):
    """Puts this module in place of `tensorrt`, with fresh records of loggers, builds and events."""
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(Logger, "instances", [])
    monkeypatch.setattr(Builder, "built", [])
    monkeypatch.setattr(module, "events", [])
    return module


def load_plan(path: Path) -> dict:
    return json.loads(Path(path).read_bytes()[len(b"FAKEPLAN"):])
