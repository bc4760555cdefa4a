"""Request models of the OpenAI endpoint. Responses use the `openai` package's own types (see chat.py)."""
from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nanovl.core.errors import ClientError
from nanovl.core.limits import MAX_CACHE_SALT_CHARS, MAX_COMPLETION_LOGPROBS
from nanovl.engine.request import SamplingParams

log = logging.getLogger(__name__)

# OpenAI fields whose meaning this server cannot honour yet: refusing beats a silent change of results.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias",
               "audio", "modalities", "prediction", "web_search_options")


class StreamOptions(BaseModel):
    include_usage: bool = False
    # vLLM's: with include_usage, every chunk also carries the usage so far (a client can meter a stream live).
    continuous_usage_stats: bool = False


def refuse_lone_surrogates(value, field: str):
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"); it has no UTF-8 form, so it cannot reach Triton (or
    even be echoed in an error): a 400 naming the field. Messages are checked where they are parsed."""
    texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    if any(0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text):
        raise ClientError(f"{field} contains a lone UTF-16 surrogate, which is not text", param=field)
    return value


class SamplingRequest(BaseModel):
    """Fields that chat and text completions share; each endpoint adds its prompt and its logprobs form.

    Types and structure only: the ranges of the sampling fields are SamplingParams' to check (one place, the same
    type the llm stage builds), and `to_sampling_params()` turns its ClientError into this request's 400."""
    # Clients send extension fields; unknown ones are ignored (logged at debug), not refused. NaN and
    # infinity (Python's json accepts them) are refused rather than sent to the engine.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    unsupported: ClassVar[tuple[str, ...]] = UNSUPPORTED

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    min_tokens: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    n: int = 1                          # range checked by SamplingParams (1 to MAX_CHOICES)
    # vLLM's: requests with different salts never share cached KV blocks (tenants kept apart).
    cache_salt: str | None = Field(default=None, min_length=1, max_length=MAX_CACHE_SALT_CHARS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("model", "stop", "user", "cache_salt", mode="after")
    @classmethod
    def _text(cls, value, info):
        return refuse_lone_surrogates(value, info.field_name)

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        extra = self.model_extra or {}
        for name in self.unsupported:
            value = extra.get(name)
            if value not in (None, False, 0, [], {}):
                raise ClientError(f"{name} is not supported by this server", param=name, code="unsupported_parameter")
        unknown = sorted(set(extra) - set(self.unsupported))
        if unknown:
            log.debug("ignoring unknown fields %s", unknown)
        self.to_sampling_params()   # a bad sampling value is a 400 now, before admission
        return self

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        """Usage on every chunk: vLLM's continuous_usage_stats, which (as there) needs include_usage."""
        return self.include_usage() and self.stream_options.continuous_usage_stats

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; k: logprobs with k alternatives."""
        raise NotImplementedError

    def prompt_text(self) -> str:
        """Chat: the messages as JSON (the chat template is applied in Triton); completions: the raw prompt."""
        raise NotImplementedError

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def _sampling_values(self) -> dict[str, Any]:
        """SamplingParams fields the client set; the others keep the defaults of the llm stage, which alone
        knows the prompt's length (max_tokens: what the context leaves, up to DEFAULT_MAX_TOKENS)."""
        values = {"max_tokens": self.requested_max_tokens(), "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "seed": self.seed, "min_tokens": self.min_tokens,
                  "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                  "repetition_penalty": self.repetition_penalty, "logprobs": self.top_logprobs_wanted(),
                  "stop": tuple(self.stop_strings()), "n": self.n if self.n != 1 else None}
        return {name: value for name, value in values.items() if value is not None and value != ()}

    def field_of(self, sampling_field: str) -> str:
        """The request field that sets a SamplingParams field (as an error's `param`)."""
        return sampling_field

    def to_sampling_params(self) -> SamplingParams:
        """The request's sampling settings, checked by SamplingParams; a bad value is a ClientError naming the
        request's own field. A max_tokens the client left out is DEFAULT_MAX_TOKENS here (the llm stage may
        lower it to fit the context)."""
        try:
            return SamplingParams(**self._sampling_values())
        except ClientError as exc:
            field = self.field_of(exc.param)
            if field == exc.param:
                raise
            raise ClientError(f"{field}: {exc.message}", param=field, code=exc.code) from None

    def sampling_inputs(self) -> dict[str, Any]:
        """Values for the ensemble's optional sampling inputs, as SamplingParams normalised them (vLLM's top_k
        -1 is 0); absent ones keep the llm stage's defaults."""
        params = self.to_sampling_params()
        return {name: getattr(params, name) for name in self._sampling_values()}


class ChatCompletionRequest(SamplingRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _logprobs_pair(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ClientError("top_logprobs needs logprobs: true", param="top_logprobs")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def requested_max_tokens(self) -> int | None:
        # OpenAI's newer name wins over the deprecated one.
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def field_of(self, sampling_field: str) -> str:
        if sampling_field == "max_tokens" and self.max_completion_tokens is not None:
            return "max_completion_tokens"
        return sampling_field

    def prompt_text(self) -> str:
        return json.dumps(self.messages)


class CompletionRequest(SamplingRequest):
    """POST /v1/completions: a raw text prompt, no chat template, no images."""
    unsupported: ClassVar[tuple[str, ...]] = (*UNSUPPORTED, "suffix", "echo")

    prompt: str | list[str] | list[int] | list[list[int]]
    # The legacy endpoint's own bound, stricter than SamplingParams' MAX_TOP_LOGPROBS: an API rule, not a range
    # of the engine.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=1)

    @model_validator(mode="after")
    def _one_text_prompt(self) -> "CompletionRequest":
        if isinstance(self.prompt, list) and not (len(self.prompt) == 1 and isinstance(self.prompt[0], str)):
            raise ClientError("prompt must be a string (or a list of one string); token-id prompts and batches "
                              "are not supported", param="prompt")
        refuse_lone_surrogates(self.prompt, "prompt")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def field_of(self, sampling_field: str) -> str:
        return "logprobs" if sampling_field == "top_logprobs" else sampling_field

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
