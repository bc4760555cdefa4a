"""Request models of the OpenAI endpoint. Responses use the `openai` package's own types (see chat.py)."""
from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nanovl.core.errors import ClientError

log = logging.getLogger(__name__)

# OpenAI fields whose meaning this server cannot honour yet: refusing beats a silent change of results.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias",
               "audio", "modalities", "prediction", "web_search_options")


class StreamOptions(BaseModel):
    include_usage: bool = False


INT32_MAX = 2 ** 31 - 1   # the ensemble's integer inputs are INT32


def refuse_lone_surrogates(value, field: str):
    """JSON may carry a lone UTF-16 surrogate ("\\ud800"); it has no UTF-8 form, so it cannot reach Triton (or
    even be echoed in an error): a 400 naming the field. Messages are checked where they are parsed."""
    texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    if any(0xD800 <= ord(c) <= 0xDFFF for text in texts for c in text):
        raise ClientError(f"{field} contains a lone UTF-16 surrogate, which is not text", param=field)
    return value


class SamplingRequest(BaseModel):
    """Fields that chat and text completions share; each endpoint adds its prompt and its logprobs form."""
    # Clients send extension fields; unknown ones are ignored (logged at debug), not refused. NaN and
    # infinity (Python's json accepts them) are refused rather than sent to the engine.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    unsupported: ClassVar[tuple[str, ...]] = UNSUPPORTED

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    stop: str | list[str] | None = None
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("model", "stop", "user", mode="after")
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
        if self.n != 1:
            raise ClientError("n must be 1: one choice per request is supported", param="n")
        if self.stop_strings() and (len(self.stop_strings()) > 4 or not all(self.stop_strings())):
            raise ClientError("stop takes up to 4 non-empty strings", param="stop")
        return self

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def top_logprobs_wanted(self) -> int | None:
        """None: no logprobs; k: logprobs with k alternatives."""
        raise NotImplementedError

    def prompt_input(self) -> tuple[str, str]:
        """(ensemble input name, its text): ("messages", JSON) or ("prompt", raw text)."""
        raise NotImplementedError

    def sampling_inputs(self) -> dict[str, Any]:
        """Values for the ensemble's optional sampling inputs; absent ones keep the model's defaults."""
        max_tokens = getattr(self, "max_completion_tokens", None) or self.max_tokens
        top_k = None if self.top_k in (None, -1) else self.top_k   # vLLM's -1 means off, as our 0
        return {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": top_k, "seed": self.seed, "min_tokens": self.min_tokens,
                "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                "repetition_penalty": self.repetition_penalty, "logprobs": self.top_logprobs_wanted(),
                "stop": self.stop_strings() or None}


class ChatCompletionRequest(SamplingRequest):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs_pair(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ClientError("top_logprobs needs logprobs: true", param="top_logprobs")
        return self

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def prompt_input(self) -> tuple[str, str]:
        return "messages", json.dumps(self.messages)


class CompletionRequest(SamplingRequest):
    """POST /v1/completions: a raw text prompt, no chat template, no images."""
    unsupported: ClassVar[tuple[str, ...]] = (*UNSUPPORTED, "suffix", "echo")

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
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

    def prompt_input(self) -> tuple[str, str]:
        return "prompt", self.prompt if isinstance(self.prompt, str) else self.prompt[0]
