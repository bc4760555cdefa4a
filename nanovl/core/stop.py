"""Stop strings over a token stream: text never shows a stop string, and text that might start one waits.

Matched on the UTF-8 bytes of the tokens (the same as matching text): tokens whose bytes could begin a stop
string are held back until the next tokens decide; on a match, the tokens before it are released and the
bytes of the last one that reach into the stop string are trimmed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .detokenize import TokenBytes


@dataclass
class Released:
    tokens: list[int]
    extras: list            # per-token payload kept aligned with tokens (logprobs)
    stopped: bool = False
    trim_bytes: int = 0     # bytes to drop from the end of the released tokens' text


@dataclass
class StopMatcher:
    token_bytes: TokenBytes
    stops: tuple[bytes, ...]
    held: list[tuple[int, object]] = field(default_factory=list)

    @classmethod
    def create(cls, token_bytes: TokenBytes, stops) -> "StopMatcher":
        return cls(token_bytes, tuple(s.encode() for s in stops))

    def feed(self, tokens: list[int], extras: list | None = None, *, final: bool = False,
             match_stops: bool = True) -> Released:
        """Adds tokens; -> what can be released now. `final` releases everything undecided."""
        self.held += zip(tokens, extras if extras is not None else [None] * len(tokens))
        pieces = [self.token_bytes.join([t]) for t, _ in self.held]
        buffer = b"".join(pieces)
        match = -1
        if self.stops and match_stops:
            match = min((p for p in (buffer.find(s) for s in self.stops) if p >= 0), default=-1)
        if match >= 0:
            count, end = _tokens_reaching(pieces, match)
            released = self.held[:count]
            self.held = []
            return Released([t for t, _ in released], [e for _, e in released], True, end - match)
        keep_from = len(buffer) if final or not match_stops else self._undecided_from(buffer)
        count, end = 0, 0
        while count < len(pieces) and end + len(pieces[count]) <= keep_from:
            end += len(pieces[count])
            count += 1
        released, self.held = self.held[:count], self.held[count:]
        return Released([t for t, _ in released], [e for _, e in released])

    def _undecided_from(self, buffer: bytes) -> int:
        """First byte from which the buffer's tail is a proper prefix of some stop string."""
        longest = max((len(s) for s in self.stops), default=1)
        for start in range(max(0, len(buffer) - longest + 1), len(buffer)):
            tail = buffer[start:]
            if any(s.startswith(tail) for s in self.stops):
                return start
        return len(buffer)


def _tokens_reaching(pieces: list[bytes], position: int) -> tuple[int, int]:
    """-> (how many leading tokens cover bytes up to `position`, the byte where they end)."""
    count, end = 0, 0
    while end < position:
        end += len(pieces[count])
        count += 1
    return count, end
