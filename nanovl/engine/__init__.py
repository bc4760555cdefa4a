"""Generation engines behind one small interface: the PyTorch reference engine here, TensorRT-LLM on GPUs."""
from .protocol import Engine
from .request import EngineOutput, GenerationRequest, SamplingParams

__all__ = ["Engine", "EngineOutput", "GenerationRequest", "SamplingParams"]
