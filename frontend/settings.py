"""Frontend settings, each read from one environment variable, declared once here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

# NIM's model id, so NIM's documented examples work unchanged.
DEFAULT_MODEL_NAME = "nvidia/llama-3.1-nemotron-nano-vl-8b-v1"
# Four base64 images at the 20 MiB image limit (preprocessing's max_image_bytes) plus JSON around them.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    triton_url: str = "127.0.0.1:8001"          # NANOVL_TRITON_URL
    model_name: str = DEFAULT_MODEL_NAME         # NANOVL_MODEL_NAME
    ensemble: str = "ensemble"                   # NANOVL_ENSEMBLE
    request_timeout_s: float = 600.0             # NANOVL_REQUEST_TIMEOUT_S: a generation past it is a 504
    # Generations in flight to Triton; more wait in a queue of max_queue; past that a 429 at once. The llm
    # stage batches max_running (16) sequences and queues the rest itself, so 64 keeps it fed.
    max_concurrency: int = 64                    # NANOVL_MAX_CONCURRENCY
    max_queue: int = 256                         # NANOVL_MAX_QUEUE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # NANOVL_MAX_BODY_BYTES: a larger request body is a 413
    api_key: str = ""                            # NANOVL_API_KEY: if set, `Authorization: Bearer <key>` needed
    cors_origins: tuple[str, ...] = ()           # NANOVL_CORS_ORIGINS: comma-separated, `*` for any
    # On SIGTERM: new requests get a 503, running ones may finish for up to this long, then the server exits.
    drain_timeout_s: float = 30.0                # NANOVL_DRAIN_TIMEOUT_S
    # Open connections (idle or stalled ones included) beyond which new ones get a 503 at once: a stalled
    # connection costs ~5 KB and uvicorn has no header timeout, so their number is what bounds memory.
    max_connections: int = 4096                  # NANOVL_MAX_CONNECTIONS
    random_weights: bool = False                 # set when the checkpoint is the tiny test one

    @classmethod
    def from_env(cls, environ=os.environ) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = environ.get(f"NANOVL_{f.name.upper()}")
            if raw is None or f.name == "random_weights":
                continue
            default = getattr(cls, f.name)
            values[f.name] = tuple(o.strip() for o in raw.split(",") if o.strip()) if isinstance(default, tuple) \
                else type(default)(raw)
        return cls(**values, random_weights=_is_tiny(environ.get("NANOVL_CHECKPOINT", "")))


def _is_tiny(checkpoint: str) -> bool:
    config = Path(checkpoint) / "config.json"
    return bool(checkpoint) and config.is_file() and \
        bool(json.loads(config.read_text()).get("nanovl_tiny_random_weights"))
