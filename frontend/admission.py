"""Bounded concurrency: `max_running` generations in flight, `max_waiting` more queued, the rest refused at once.

Refusing early (429 + Retry-After) keeps latency bounded for admitted requests and tells load balancers and
clients to back off, instead of letting an unbounded queue grow behind the engine.
"""
from __future__ import annotations

import asyncio

from .errors import HTTPError


class Admission:
    def __init__(self, max_running: int, max_waiting: int):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self.draining = False       # set on SIGTERM: no new work, running work may finish
        self._slots = asyncio.Semaphore(max_running)

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0

    async def acquire(self) -> None:
        """Takes a slot, waiting in line if needed; raises a 429 when the line is full too, a 503 when
        the server is shutting down."""
        if self.draining:
            raise HTTPError(503, "the server is shutting down; retry on another replica", type_="service_unavailable",
                            code="shutting_down", headers={"Retry-After": "1"})
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise HTTPError(429, f"the server is at capacity ({self.running} requests running, {self.waiting} "
                            "waiting); retry later", type_="rate_limit_error", code="server_busy",
                            headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()
