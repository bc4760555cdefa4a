"""What the HTTP layer needs from whatever generates: the Backend protocol and the Delta it streams.

TritonBackend (frontend/triton_backend.py) is the one that serves; tests/frontend/fake_backend.py scripts one for
unit tests of the HTTP layer with no server behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from .schemas import SamplingRequest


@dataclass
class Delta:
    """What one response of a generation adds to one of its choices. Token counts are running totals of that
    choice; finish_reason is set on the choice's last delta only ("stop" or "length")."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict] | None = None    # OpenAI ChatCompletionTokenLogprob dicts, when asked for
    index: int = 0                        # the choice (0 to n-1); counts and finish_reason are that choice's
    cached_tokens: int = 0                # prompt tokens the prefix cache served


class Backend(Protocol):
    async def ready(self) -> bool:
        """Whether a generation sent now would be served: GET /v1/health/ready answers 503 while it is not.
        Never raises for an unreachable backend; it is just not ready."""
        ...

    def generate(self, request: SamplingRequest, request_id: str) -> AsyncIterator[Delta]:
        """An async generator of the request's deltas, the last one carrying the finish reason.

        `request` is already valid (its to_sampling_params() passed). `request_id` names the generation to the
        backend, for logs and stops. Errors are raised from the iteration as nanovl.core.errors.NanoVLError
        (ClientError: the request, e.g. a prompt longer than the context; ServerError or the frontend's
        HTTPError: 503 for an unavailable backend, 504 for a timeout), before the first delta or after any.
        Closing the generator early (aclose(): the client left) must stop the generation and free what it
        holds; closing it after its end is harmless.
        """
        ...

    async def close(self) -> None:
        """Releases connections at the app's shutdown; no generate() follows."""
        ...
