"""Chained block hashes for prefix caching: equal hashes mean equal KV, so a hit never changes an answer.

The hash of block i covers the hash of block i-1, the block's token ids and its extra ids (the image content
hash at image positions, 0 elsewhere: image rows all read `vocab_size + row`, so the ids alone would let two
images of the same size share KV), and for block 0 the request's cache_salt. BLAKE2b, not Python's hash(): a
64-bit collision would silently serve another prompt's KV.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .request import GenerationRequest

_DIGEST = 16


def table_hash(table) -> int:
    """A prompt table's content hash (>= 1): the extra id of its image rows when the request carries none (a
    direct gRPC client sending its own table), coarser than per image but never wrong."""
    data = np.ascontiguousarray(np.asarray(table, np.float32)).tobytes()
    return (int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1) or 1


def prompt_extra_ids(request: GenerationRequest, vocab_size: int) -> np.ndarray:
    """int64 [prompt_len]: the request's extra ids, or 0 for text and its table's hash for image rows."""
    if request.prompt_extra_ids is not None:
        return np.asarray(request.prompt_extra_ids, np.int64).reshape(-1)
    ids = np.asarray(request.prompt_ids, np.int64)
    extra = np.zeros(len(ids), np.int64)
    if request.prompt_table is not None and (ids >= vocab_size).any():
        extra[ids >= vocab_size] = table_hash(request.prompt_table)
    return extra


def block_hashes(tokens: np.ndarray, extra: np.ndarray, block_size: int, *, salt: str | None,
                 previous: list[bytes] | None = None) -> list[bytes]:
    """Hashes of every full block of tokens (int64 [L]) with their extra ids (int64 [L]); `previous`: hashes
    already known for the first blocks (extended, not recomputed)."""
    hashes = list(previous or [])
    parent = hashes[-1] if hashes else b"salt:" + (salt or "").encode()
    for i in range(len(hashes), len(tokens) // block_size):
        span = slice(i * block_size, (i + 1) * block_size)
        h = hashlib.blake2b(parent, digest_size=_DIGEST)
        h.update(np.ascontiguousarray(tokens[span], np.int64).tobytes())
        h.update(np.ascontiguousarray(extra[span], np.int64).tobytes())
        parent = h.digest()
        hashes.append(parent)
    return hashes
