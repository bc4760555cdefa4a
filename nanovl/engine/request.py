"""What goes into an engine and what comes out: the contract both engines keep."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ClientError

DEFAULT_MAX_TOKENS = 1024   # when a request names none; bounded by the context left after the prompt


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0     # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0               # 0 = no top-k cut
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (0.0 <= self.temperature <= 2.0, "temperature", "must be between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be 0 (off) or positive"),
            (self.seed is None or 0 <= self.seed < 2 ** 63, "seed", "must be a non-negative 64-bit integer"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ClientError(f"{name} {why}", param=name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class GenerationRequest:
    """prompt_ids: int32 [prompt_len]; ids >= vocab_size index rows of prompt_table.
    prompt_table: float [rows, hidden] image embeddings, or None for a text-only prompt."""

    request_id: str
    prompt_ids: np.ndarray
    sampling: SamplingParams
    prompt_table: object | None = None


@dataclass
class EngineOutput:
    """Tokens produced since the last output for one request; `finish_reason` is set on its last output."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
