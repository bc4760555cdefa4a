"""Paged KV-cache bookkeeping: which pool blocks hold which sequence's tokens. Pure Python, no torch.

Blocks are shared by reference count: a full block whose KV is written can be registered under the chained hash
of its tokens (prefix.py), and a later sequence with the same prefix takes it instead of computing it again
(automatic prefix caching, as vLLM's). A block no sequence holds any more keeps its hash and waits in an LRU
for a hit; it is evicted (its hash forgotten) only when the never-cached free blocks have run out. Only full
blocks are ever shared, and a sequence writes only past its shared prefix, so no block is written while shared.
"""
from __future__ import annotations

from collections import OrderedDict, deque


class BlockManager:
    """A pool of `num_blocks` blocks of `block_size` token slots; slot = block * block_size + offset."""

    def __init__(self, num_blocks: int, block_size: int, *, caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}            # block -> its registered hash
        self._by_hash: dict[bytes, int] = {}            # hash -> the block holding it
        self._evictable: OrderedDict[int, None] = OrderedDict()   # cached, unreferenced; oldest first
        self.tables: dict[int, list[int]] = {}
        self.allocated = 0        # blocks ever taken from the free list or evicted: what a prefill cost
        self.queried_tokens = 0   # prefix-cache lookups, in tokens (vLLM's prefix_cache_queries)
        self.hit_tokens = 0       # of which found in the cache (prefix_cache_hits)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        return 1.0 - self.free_blocks / self.num_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks that hold a registered hash and no sequence: kept only for a later hit."""
        return len(self._evictable)

    def can_hold(self, key: int, num_tokens: int) -> bool:
        """Whether the sequence can grow to `num_tokens` tokens with the free blocks left."""
        have = len(self.tables.get(key, ()))
        return self.blocks_for(num_tokens) - have <= self.free_blocks

    def ensure(self, key: int, num_tokens: int) -> list[int]:
        """Grow the sequence's table to hold `num_tokens` tokens. -> its block table."""
        table = self.tables.setdefault(key, [])
        need = self.blocks_for(num_tokens) - len(table)
        if need > self.free_blocks:
            raise MemoryError(f"KV cache: {need} blocks needed, {self.free_blocks} free")
        table.extend(self._take() for _ in range(need))
        return table

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:   # the least recently used cached block gives up its hash
            block, _ = self._evictable.popitem(last=False)
            del self._by_hash[self._hash_of.pop(block)]
        self._refs[block] = 1
        self.allocated += 1
        return block

    def match(self, key: int, hashes: list[bytes]) -> int:
        """Starts the (empty) table of a sequence with the longest run of cached blocks whose hashes begin
        `hashes`. -> blocks matched."""
        table = self.tables.setdefault(key, [])
        assert not table, "match() starts a table"
        if not self.caching:
            return 0
        for block_hash in hashes:
            block = self._by_hash.get(block_hash)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._evictable[block]
            self._refs[block] += 1
            table.append(block)
        return len(table)

    def count_lookup(self, queried: int, hit: int) -> None:
        """A request's prompt tokens looked up and found, once per request (the metrics)."""
        if not self.caching:
            return
        self.queried_tokens += queried
        self.hit_tokens += hit

    def register(self, key: int, hashes: list[bytes], start: int = 0) -> None:
        """Records that the sequence's blocks start.. start+len(hashes)-1 are full and written, with these hashes.
        A hash another block already holds keeps that block (this one stays private and is freed as usual)."""
        if not self.caching:
            return
        for block, block_hash in zip(self.tables[key][start:], hashes):
            if block not in self._hash_of and block_hash not in self._by_hash:
                self._hash_of[block] = block_hash
                self._by_hash[block_hash] = block

    def fork(self, parent: int, child: int, num_tokens: int) -> None:
        """Starts the child's table with the parent's first num_tokens tokens (whole blocks), shared."""
        assert num_tokens % self.block_size == 0, "only full blocks are shared"
        shared = self.tables[parent][:num_tokens // self.block_size]
        for block in shared:
            self._refs[block] += 1
        self.tables[child] = list(shared)

    def slots(self, key: int, start: int, end: int) -> list[int]:
        """Pool slots of token positions start..end-1 of the sequence."""
        table, size = self.tables[key], self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]

    def free(self, key: int) -> None:
        # Tail first: the LRU then evicts a sequence's last blocks before its prefix, which more prompts share.
        for block in reversed(self.tables.pop(key, ())):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None   # most recently used last
                else:
                    self._free.append(block)
