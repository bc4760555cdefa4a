"""Frontend settings, each read from one environment variable, declared once here."""
from __future__ import annotations

import os
from dataclasses import dataclass

# NIM's model id, so NIM's documented examples work unchanged.
DEFAULT_MODEL_NAME = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"


@dataclass(frozen=True)
class Settings:
    triton_url: str = "127.0.0.1:8001"          # NANOVL_TRITON_URL
    model_name: str = DEFAULT_MODEL_NAME         # NANOVL_MODEL_NAME
    ensemble: str = "ensemble"                   # NANOVL_ENSEMBLE
    request_timeout_s: float = 600.0             # NANOVL_REQUEST_TIMEOUT_S
    random_weights: bool = False                 # set when the checkpoint is the tiny test one

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        return cls(
            triton_url=env.get("NANOVL_TRITON_URL", cls.triton_url),
            model_name=env.get("NANOVL_MODEL_NAME", cls.model_name),
            ensemble=env.get("NANOVL_ENSEMBLE", cls.ensemble),
            request_timeout_s=float(env.get("NANOVL_REQUEST_TIMEOUT_S", cls.request_timeout_s)),
            random_weights=_is_tiny(env.get("NANOVL_CHECKPOINT", "")),
        )


def _is_tiny(checkpoint: str) -> bool:
    import json
    from pathlib import Path

    config = Path(checkpoint) / "config.json"
    return bool(checkpoint) and config.is_file() and \
        bool(json.loads(config.read_text()).get("nanovl_tiny_random_weights"))
