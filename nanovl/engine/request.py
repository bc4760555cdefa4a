"""What goes into an engine and what comes out: the contract both engines keep."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..core.checkpoint import CheckpointConfig
from ..core.errors import ClientError
from ..core.limits import (DEFAULT_MAX_TOKENS, INT32_MAX, INT64_MAX, MAX_CHOICES, MAX_PENALTY,
                           MAX_REPETITION_PENALTY, MAX_STOP_STRINGS, MAX_TEMPERATURE, MAX_TOP_LOGPROBS)


@dataclass(frozen=True)
class SamplingParams:
    """A request's sampling settings, and the one place their ranges are checked: the frontend builds one to
    validate a request, the llm stage builds one from the wire's tensors. A bad value is a ClientError whose
    `param` names the OpenAI field."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0
    temperature: float = 1.0            # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                      # 0 = no top-k cut; vLLM's -1 is accepted and stored as 0
    seed: int | None = None
    repetition_penalty: float = 1.0     # HF / vLLM: divides positive logits of seen (prompt + output) tokens
    frequency_penalty: float = 0.0      # OpenAI: minus penalty x count in the output so far
    presence_penalty: float = 0.0       # OpenAI: minus penalty once a token appeared in the output
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()          # stop strings, never in the output text
    logprobs: int | None = None         # None: none; k >= 0: the chosen token's and the top k
    # Choices per request: one prefill of the prompt, then n sequences sharing its KV blocks; choice i draws
    # with its own generator (choice_seed), so a seed reproduces all n.
    n: int = 1                          # choices; TensorRT-LLM: num_return_sequences
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, bias); TensorRT-LLM: embedding_bias
    guide_kind: str | None = None       # "json" | "json_schema" | "regex" | "ebnf" | "structural_tag"
    guide: str | None = None            # the schema / regex / EBNF / structural-tag text

    def __post_init__(self):
        if self.top_k == -1:   # vLLM clients send -1 for "off"; the engines know only 0
            object.__setattr__(self, "top_k", 0)
        for ok, name, why in self._checks():
            if not ok:
                raise ClientError(f"{name} {why}", param=name)

    def _checks(self) -> list[tuple[bool, str, str]]:
        # Integer fields travel as INT32 (seed as INT64) between the stages: past that, numpy would wrap them.
        return [
            (1 <= self.max_tokens <= INT32_MAX, "max_tokens", f"must be between 1 and {INT32_MAX}"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens", "must be between 0 and max_tokens"),
            (0.0 <= self.temperature <= MAX_TEMPERATURE, "temperature", f"must be between 0 and {MAX_TEMPERATURE:g}"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (0 <= self.top_k <= INT32_MAX, "top_k", f"must be 0 or -1 (off), or from 1 to {INT32_MAX}"),
            (self.seed is None or 0 <= self.seed <= INT64_MAX, "seed", "must be a non-negative 64-bit integer"),
            (0.0 < self.repetition_penalty <= MAX_REPETITION_PENALTY, "repetition_penalty",
             f"must be in (0, {MAX_REPETITION_PENALTY:g}]"),
            (-MAX_PENALTY <= self.frequency_penalty <= MAX_PENALTY, "frequency_penalty",
             f"must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}"),
            (-MAX_PENALTY <= self.presence_penalty <= MAX_PENALTY, "presence_penalty",
             f"must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}"),
            (len(self.stop) <= MAX_STOP_STRINGS and all(self.stop), "stop",
             f"takes at most {MAX_STOP_STRINGS} non-empty strings"),
            (all(0 <= t <= INT32_MAX for t in self.stop_token_ids), "stop_token_ids",
             f"must be token ids between 0 and {INT32_MAX}"),
            (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
             f"must be between 0 and {MAX_TOP_LOGPROBS}"),
            (1 <= self.n <= MAX_CHOICES, "n", f"must be between 1 and {MAX_CHOICES}"),
        ]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def choice_seed(self, index: int) -> int | None:
        """The seed of choice `index`: the request's own for choice 0 (so n=1 draws what it always drew), and for
        the others a hash of (seed, index), so that no choice of seed s replays choice 0 of seed s + i."""
        if self.seed is None or index == 0:
            return self.seed
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def sampling_params(config: CheckpointConfig, prompt_len: int, *, max_tokens=None, stop_token_ids=None,
                    **values) -> SamplingParams:
    """Request values (None = absent) -> SamplingParams with the checkpoint's stop tokens, bounded by the context the
    prompt leaves: the one check that needs the prompt's length, so it runs where the prompt is known (llm)."""
    room = config.max_context - prompt_len
    if room < 1:
        raise ClientError(f"the prompt is {prompt_len} tokens; the context holds {config.max_context}",
                          param="messages", code="context_length_exceeded")
    if max_tokens is not None and max_tokens > room:
        raise ClientError(f"max_tokens {max_tokens} plus the {prompt_len}-token prompt exceeds the "
                          f"{config.max_context}-token context", param="max_tokens",
                          code="context_length_exceeded")
    values["max_tokens"] = max_tokens if max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
    stops = tuple(config.eos_token_ids) + tuple(t for t in (stop_token_ids or ()) if t not in config.eos_token_ids)
    return SamplingParams(**{k: v for k, v in values.items() if v is not None}, stop_token_ids=stops)


@dataclass
class GenerationRequest:
    """prompt_ids: int32 [prompt_len]; ids >= vocab_size index rows of prompt_table.
    prompt_table: float [rows, hidden] image embeddings, or None for a text-only prompt.
    prompt_extra_ids: int64 [prompt_len]: 0 at text positions; at image positions an id derived from that image's
    content hash (TensorRT-LLM's input_token_extra_ids), so equal ids <=> same image content. None: all 0 (a
    prompt with image rows and no extra ids is keyed by a hash of its table instead, see prefix.py).
    cache_salt: vLLM's: prompts with different salts never share cached KV blocks (tenants kept apart).
    """

    request_id: str
    prompt_ids: np.ndarray
    sampling: SamplingParams
    prompt_table: object | None = None
    # int64 [prompt_len]: 0 at text positions, an id from the image's content hash at its positions, so that
    # KV-cache reuse reuses an image's KV only for the same image (TensorRT-LLM's input_token_extra_ids).
    prompt_extra_ids: np.ndarray | None = None
    cache_salt: str | None = None       # vLLM's cache_salt: KV-cache reuse only among requests with the same salt


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
    sequence_index: int = 0              # which of the request's n choices this output belongs to
    cached_tokens: int = 0               # prompt tokens served from the prefix cache (OpenAI's cached_tokens)

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
    # Prefix cache, as vLLM counts it: prompt tokens looked up and found (totals), and KV bytes of the cached
    # blocks no sequence uses now (kept for a later hit, evicted least recently used).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_bytes: int = 0
