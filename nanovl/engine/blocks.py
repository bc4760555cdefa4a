"""Paged KV-cache bookkeeping: which pool blocks hold which sequence's tokens. Pure Python, no torch."""
from __future__ import annotations

from collections import deque


class BlockManager:
    """A pool of `num_blocks` blocks of `block_size` token slots; slot = block * block_size + offset."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def can_hold(self, key: int, num_tokens: int) -> bool:
        """Whether the sequence can grow to `num_tokens` tokens with the free blocks left."""
        have = len(self.tables.get(key, ()))
        return self.blocks_for(num_tokens) - have <= len(self._free)

    def ensure(self, key: int, num_tokens: int) -> list[int]:
        """Grow the sequence's table to hold `num_tokens` tokens. -> its block table."""
        table = self.tables.setdefault(key, [])
        need = self.blocks_for(num_tokens) - len(table)
        if need > len(self._free):
            raise MemoryError(f"KV cache: {need} blocks needed, {len(self._free)} free")
        table.extend(self._free.popleft() for _ in range(need))
        return table

    def slots(self, key: int, start: int, end: int) -> list[int]:
        """Pool slots of token positions start..end-1 of the sequence."""
        table, size = self.tables[key], self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]

    def free(self, key: int) -> None:
        self._free.extend(self.tables.pop(key, ()))
