"""Request models of the OpenAI endpoint. Responses use the `openai` package's own types (see chat.py)."""
from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nanovl.errors import ClientError

log = logging.getLogger(__name__)

# OpenAI fields whose meaning this server cannot honour yet: refusing beats a silent change of results.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias",
               "logprobs", "top_logprobs", "stop", "frequency_penalty", "presence_penalty",
               "repetition_penalty", "min_tokens", "audio", "modalities", "prediction")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Clients send extension fields; unknown ones are ignored (logged at debug), not refused.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> "ChatCompletionRequest":
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            value = extra.get(name)
            if value not in (None, False, 0, [], {}):
                raise ClientError(f"{name} is not supported by this server", param=name, code="unsupported_parameter")
        unknown = sorted(set(extra) - set(UNSUPPORTED))
        if unknown:
            log.debug("ignoring unknown fields %s", unknown)
        if self.n != 1:
            raise ClientError("n must be 1: one choice per request is supported", param="n")
        return self

    def sampling_inputs(self) -> dict[str, Any]:
        """Values for the ensemble's optional sampling inputs; absent ones keep the model's defaults."""
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        top_k = None if self.top_k in (None, -1) else self.top_k   # vLLM's -1 means off, as our 0
        return {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": top_k, "seed": self.seed}
