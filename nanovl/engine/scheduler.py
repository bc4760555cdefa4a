"""Which sequences run in the next engine step. Pure Python: no torch, unit-tested on its own."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .request import GenerationRequest


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    pending: list[int] = field(default_factory=list)   # produced but not yet reported

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)


class Scheduler:
    """A bounded running batch and a FIFO queue behind it; requests join and leave between steps."""

    def __init__(self, max_running: int):
        self.max_running = max_running
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        """-> (sequences to prefill this step, sequences to decode this step)."""
        decodes = list(self.running)
        prefills = []
        while self.waiting and len(self.running) < self.max_running:
            seq = self.waiting.popleft()
            self.running.append(seq)
            prefills.append(seq)
        return prefills, decodes

    def remove(self, request_id: str) -> Sequence | None:
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    return seq
        return None

    def retire_finished(self) -> list[Sequence]:
        done = [seq for seq in self.running if seq.finish_reason is not None]
        self.running = [seq for seq in self.running if seq.finish_reason is None]
        return done

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting
