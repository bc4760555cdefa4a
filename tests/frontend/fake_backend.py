"""A scripted Backend (frontend/backend.py) for unit tests of the HTTP layer: no Triton, no engine."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from frontend.backend import Delta
from frontend.schemas import SamplingRequest


def deltas(*texts: str, prompt_tokens: int = 5, finish_reason: str = "stop") -> list[Delta]:
    """One delta per text, one token each, the last one finishing."""
    return [Delta(text, [100 + i], finish_reason if i == len(texts) - 1 else None, prompt_tokens, i + 1)
            for i, text in enumerate(texts)]


@dataclass
class Call:
    request: SamplingRequest
    request_id: str
    sent: int = 0                 # deltas handed out (the last one may not have been taken in)
    finished: bool = False        # the script ran to its end (or to its error)
    closed_early: bool = False    # closed or cancelled before that: the client left


@dataclass
class ScriptedBackend:
    """Yields `script`, but raises `error` once `error_after` deltas are out; waits `delay_s` before each delta
    and, when there is a `gate`, for it to open before delta number `gate_after`. Records every call and close()."""

    script: list[Delta] = field(default_factory=lambda: deltas("Hel", "lo"))
    error: BaseException | None = None
    error_after: int = 0
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    gate_after: int = 0
    is_ready: bool = True
    calls: list[Call] = field(default_factory=list)
    closed: bool = False

    async def ready(self) -> bool:
        return self.is_ready

    async def generate(self, request: SamplingRequest, request_id: str) -> AsyncIterator[Delta]:
        call = Call(request, request_id)
        self.calls.append(call)
        try:
            for delta in self.script:
                if self.error is not None and call.sent == self.error_after:
                    break
                if self.gate is not None and call.sent == self.gate_after:
                    await self.gate.wait()
                await asyncio.sleep(self.delay_s)
                call.sent += 1
                yield delta
            call.finished = True
            if self.error is not None:
                raise self.error
        finally:
            call.closed_early = not call.finished

    async def close(self) -> None:
        self.closed = True
