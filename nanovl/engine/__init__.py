"""Generation engines behind one small interface: the PyTorch reference engine here, TensorRT-LLM on GPUs."""
from .request import EngineOutput, GenerationRequest, SamplingParams

__all__ = ["EngineOutput", "GenerationRequest", "SamplingParams"]
