"""Builds the engine a stage config names. TensorRT-LLM is imported only when selected."""
from __future__ import annotations

from typing import Callable

from ..checkpoint import CheckpointConfig
from ..errors import ServerError
from .request import EngineOutput

ENGINES = ("reference",)


def build_engine(name: str, config: CheckpointConfig, on_output: Callable[[EngineOutput], None], *,
                 device: str = "cpu", dtype: str | None = None, max_running: int = 16):
    if name == "reference":
        from .engine import ReferenceEngine
        from .runner import ModelRunner

        return ReferenceEngine(ModelRunner(config, dtype=dtype, device=device), on_output,
                               max_running=max_running).start()
    raise ServerError(f"engine {name!r} is not available (choose from {', '.join(ENGINES)})")
