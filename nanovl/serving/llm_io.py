"""The llm stage's tensors <-> the generation service's terms, minus Triton: a request's inputs -> what
GenerationService.submit takes, a StreamMessage -> its output tensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.checkpoint import CheckpointConfig
from ..core.errors import ClientError
from ..core.limits import MAX_CACHE_SALT_CHARS
from ..engine.request import SamplingParams, sampling_params
from . import tensors as T
from .service import StreamMessage

_SCALARS = tuple(t.name for t in T.SAMPLING if t not in (T.STOP, T.STOP_TOKEN_IDS))
Inputs = Callable[[str], "np.ndarray | None"]   # a tensor of the request by name, None when absent


@dataclass
class LlmRequest:
    prompt_ids: np.ndarray                 # int32 [prompt_len]
    sampling: SamplingParams
    prompt_table: np.ndarray | None        # float [rows, hidden]
    prompt_extra_ids: np.ndarray | None    # int64 [prompt_len]
    cache_salt: str | None


def _scalar(inputs: Inputs, name: str):
    value = inputs(name)
    return None if value is None else value.reshape(-1)[0].item()


def read_request(inputs: Inputs, config: CheckpointConfig) -> LlmRequest:
    """A generation request's tensors -> its settings, checked (a bad value is a ClientError naming the field)."""
    prompt_ids = inputs(T.INPUT_IDS.name).reshape(-1)
    table = inputs(T.PROMPT_TABLE.name)   # [1, rows, hidden]
    table = None if table is None else table.reshape(-1, table.shape[-1])
    stop, stop_ids = inputs(T.STOP.name), inputs(T.STOP_TOKEN_IDS.name)
    sampling = sampling_params(
        config, len(prompt_ids), **{name: _scalar(inputs, name) for name in _SCALARS},
        n=_scalar(inputs, T.NUM_RETURN_SEQUENCES.name),
        stop=tuple(s.decode() for s in stop.reshape(-1)) if stop is not None else None,
        stop_token_ids=tuple(stop_ids.reshape(-1).tolist()) if stop_ids is not None else None)
    extra = inputs(T.PROMPT_EXTRA_IDS.name)
    if extra is not None and extra.size != len(prompt_ids):
        raise ClientError(f"prompt_extra_ids has {extra.size} ids for {len(prompt_ids)} prompt ids",
                          param="prompt_extra_ids")
    salt = inputs(T.CACHE_SALT.name)
    return LlmRequest(prompt_ids, sampling, table if table is not None and len(table) else None,
                      None if extra is None else extra.reshape(-1).astype(np.int64),
                      None if salt is None else cache_salt(salt.reshape(-1)[0]))


def cache_salt(value: bytes | str) -> str:
    """vLLM's cache_salt, checked: a non-empty UTF-8 string of at most MAX_CACHE_SALT_CHARS characters."""
    try:
        text = value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        raise ClientError("cache_salt is not valid UTF-8", param="cache_salt") from None
    if not 0 < len(text) <= MAX_CACHE_SALT_CHARS:
        raise ClientError(f"cache_salt must have 1 to {MAX_CACHE_SALT_CHARS} characters", param="cache_salt")
    return text


def message_outputs(message: StreamMessage) -> dict[str, np.ndarray]:
    """A StreamMessage -> the llm stage's output tensors."""
    logprobs = message.logprobs or []
    k = len(logprobs[0].top) if logprobs else 0
    return {
        T.OUTPUT_IDS.name: message.output_ids,
        T.NEW_OFFSET.name: np.array([message.new_offset], np.int32),
        T.FINISH_REASON.name: np.array([message.finish_reason.encode()], np.object_),
        T.PROMPT_TOKENS.name: np.array([message.prompt_tokens], np.int32),
        T.COMPLETION_TOKENS.name: np.array([message.completion_tokens], np.int32),
        T.TRIM_BYTES.name: np.array([message.trim_bytes], np.int32),
        T.TOKEN_LOGPROBS.name: np.array([lp.logprob for lp in logprobs], np.float32),
        T.TOP_LOGPROB_IDS.name: np.array([[t for t, _ in lp.top] for lp in logprobs], np.int32).reshape(len(logprobs), k),
        T.TOP_LOGPROBS.name: np.array([[v for _, v in lp.top] for lp in logprobs], np.float32).reshape(len(logprobs), k),
        T.SEQUENCE_INDEX.name: np.array([message.sequence_index], np.int32),
        T.CACHED_TOKENS.name: np.array([message.cached_tokens], np.int32),
    }
