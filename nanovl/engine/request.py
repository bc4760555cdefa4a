"""What goes into an engine and what comes out: the contract both engines keep."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ClientError

DEFAULT_MAX_TOKENS = 1024   # when a request names none; bounded by the context left after the prompt
MAX_TOP_LOGPROBS = 20       # OpenAI's bound


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0
    temperature: float = 1.0            # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                      # 0 = no top-k cut
    seed: int | None = None
    repetition_penalty: float = 1.0     # HF / vLLM: divides positive logits of seen (prompt + output) tokens
    frequency_penalty: float = 0.0      # OpenAI: minus penalty x count in the output so far
    presence_penalty: float = 0.0       # OpenAI: minus penalty once a token appeared in the output
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()          # stop strings, never in the output text
    logprobs: int | None = None         # None: none; k >= 0: the chosen token's and the top k

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens", "must be between 0 and max_tokens"),
            (0.0 <= self.temperature <= 2.0, "temperature", "must be between 0 and 2"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be 0 (off) or positive"),
            (self.seed is None or 0 <= self.seed < 2 ** 63, "seed", "must be a non-negative 64-bit integer"),
            (0.0 < self.repetition_penalty <= 2.0, "repetition_penalty", "must be in (0, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be between -2 and 2"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be between -2 and 2"),
            (len(self.stop) <= 4 and all(self.stop), "stop", "takes at most 4 non-empty strings"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
             f"must be between 0 and {MAX_TOP_LOGPROBS}"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ClientError(f"{name} {why}", param=name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass
class GenerationRequest:
    """prompt_ids: int32 [prompt_len]; ids >= vocab_size index rows of prompt_table.
    prompt_table: float [rows, hidden] image embeddings, or None for a text-only prompt."""

    request_id: str
    prompt_ids: np.ndarray
    sampling: SamplingParams
    prompt_table: object | None = None


@dataclass
class TokenLogprob:
    logprob: float
    top: list[tuple[int, float]]    # (token id, logprob), best first


@dataclass
class EngineOutput:
    """Tokens produced since the last output for one request; `finish_reason` is set on its last output."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None   # one per token id, when asked for

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineStats:
    """What an engine reports for the llm stage's gauges; here, not in engine.py, so that the TensorRT-LLM engine
    imports without the reference engine's torch."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    steps: int = 0
    forward_s: float = 0.0     # time inside the model forward
    step_s: float = 0.0        # whole steps: forward + scheduling + sampling + reporting
