"""Images seen before cost neither a decode nor an encoder forward: content hashes, the preprocessing stage's
record of what it has sent, and the vision stage's embedding cache (bounded in bytes, least recently used).

An image's key hashes its encoded bytes (never its URL: a URL is fetched every time, the bytes decide), the
tiling settings and the checkpoint, so equal keys mean equal tiles and equal embeddings. The same key is the
image's extra id at its prompt positions (TensorRT-LLM's input_token_extra_ids), which keys its KV blocks.

The two stages are separate processes. Preprocessing sends an image it has sent before as its encoded bytes
instead of tiles (no decode, no tiling; the tile count comes from its record). If the encoder has evicted it
meanwhile (or restarted), the encoder decodes and tiles the bytes itself: a miss costs time, never an answer.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import load_rgb, open_image
from .tiling import TilingSettings, tile_image


def model_identity(checkpoint_dir) -> bytes:
    """Bytes that change when the checkpoint does: its config and the size and time of its weight files."""
    root = Path(checkpoint_dir)
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(root.glob("*.json")) + sorted(root.glob("*.safetensors")):
        stat = path.stat()
        h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.digest()


def image_key(data: bytes, tiling: TilingSettings, identity: bytes) -> int:
    """An image's content key: 63 bits (an INT64 on the wire, a TensorRT-LLM extra id), never 0 (text's)."""
    h = hashlib.blake2b(identity, digest_size=8)
    h.update(repr((tiling.tile_size, tiling.max_tiles, tiling.use_thumbnail, tiling.upscale_2x)).encode())
    h.update(data)
    return (int.from_bytes(h.digest(), "little") >> 1) or 1


def tiling_row(tiling: TilingSettings) -> np.ndarray:
    """int32 [4]: the image_tiling tensor."""
    return np.array([tiling.tile_size, tiling.max_tiles, tiling.use_thumbnail, tiling.upscale_2x], np.int32)


def tiling_of(row) -> TilingSettings:
    size, max_tiles, thumbnail, upscale = (int(v) for v in np.asarray(row).reshape(-1)[:4])
    return TilingSettings(tile_size=size, max_tiles=max_tiles, use_thumbnail=bool(thumbnail), upscale_2x=bool(upscale))


def extra_ids(input_ids: np.ndarray, keys: list[int], counts: list[int], vocab_size: int,
              tokens_per_tile: int) -> np.ndarray:
    """int64 [prompt_len]: 0 at text positions, each image's key at its embedding positions (in order)."""
    extra = np.zeros(len(input_ids), np.int64)
    image = np.flatnonzero(np.asarray(input_ids) >= vocab_size)
    extra[image] = np.repeat(np.asarray(keys, np.int64), np.asarray(counts, np.int64) * tokens_per_tile)
    return extra


class SeenImages:
    """Preprocessing's record of images whose tiles it has sent (key -> tile count), most recent last; bounded
    by count. Thread-safe. With a directory, the stage's instances (processes) share it: one small file per
    image, named by its key and holding its tile count, written whole by a rename so that no reader sees half
    an entry; any instance may write an entry again, with the same count (a function of the key)."""

    def __init__(self, entries: int, directory: Path | None = None):
        self.entries = entries
        self.directory = directory if entries > 0 else None
        self._counts: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        self._writes = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def get(self, key: int) -> int | None:
        with self._lock:
            count = self._counts.get(key)
            if count is not None:
                self._counts.move_to_end(key)
                return count
        if self.directory is None:
            return None
        try:
            count = int((self.directory / f"{key:016x}").read_text())
        except (OSError, ValueError):
            return None
        self._remember(key, count)
        return count

    def add(self, key: int, count: int) -> None:
        if self.entries <= 0:
            return
        self._remember(key, count)
        if self.directory is not None:
            path = self.directory / f"{key:016x}"
            temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(str(count))
            os.replace(temporary, path)
            self._writes += 1
            if self._writes % 64 == 0:
                self._prune()

    def _remember(self, key: int, count: int) -> None:
        with self._lock:
            self._counts[key] = count
            self._counts.move_to_end(key)
            while len(self._counts) > self.entries:
                self._counts.popitem(last=False)

    def _prune(self) -> None:
        """The shared directory keeps the `entries` most recently written files."""
        files = []
        for entry in os.scandir(self.directory):
            try:
                if not entry.name.endswith(".tmp"):
                    files.append((entry.stat().st_mtime_ns, entry.path))
            except OSError:   # another instance pruned it first
                pass
        for _, path in sorted(files)[:-self.entries]:
            Path(path).unlink(missing_ok=True)


class EmbeddingCache:
    """The vision stage's cache: key -> the image's embeddings (float [tiles * tokens_per_tile, hidden]), at
    most max_bytes in all, least recently used evicted first. Counters as vLLM's (queries, hits) and the bytes
    held, for the stage's metrics."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.queries = 0
        self.hits = 0

    def get(self, key: int) -> np.ndarray | None:
        self.queries += 1
        rows = self._entries.get(key)
        if rows is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return rows

    def put(self, key: int, rows: np.ndarray) -> None:
        if rows.nbytes > self.max_bytes or key in self._entries:
            return
        rows = np.array(rows, copy=True)   # own it: a slice would keep the whole batch's array alive
        self._entries[key] = rows
        self.bytes += rows.nbytes
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class VisionRequest:
    """One request of a vision batch. tiles: uint8 [n, S, S, 3] of its images sent as tiles, in order; keys,
    counts, sources: per image (sources[i] b"" when image i is in tiles); keys None: a client that sent tiles
    alone (no caching)."""

    tiles: np.ndarray
    keys: list[int] | None = None
    counts: list[int] | None = None
    sources: list[bytes] | None = None
    tiling: TilingSettings | None = None


def _image_tiles(request: VisionRequest, cache: EmbeddingCache | None):
    """Per image of the request: ("cached", rows) or ("new", key, tiles); keys None -> one uncached part."""
    if request.keys is None:
        return [("new", None, request.tiles)]
    parts, offset = [], 0
    for key, count, source in zip(request.keys, request.counts, request.sources):
        if not source:   # sent as tiles: they are consumed whether or not the cache answers
            tiles, offset = request.tiles[offset:offset + count], offset + count
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            parts.append(("cached", cached))
        else:   # an image sent as bytes that the cache no longer holds is decoded here
            parts.append(("new", key, tiles if not source else
                          tile_image(load_rgb(open_image(source, index=0)), request.tiling)))
    return parts


def encode_batch(encoder, requests: list[VisionRequest], cache: EmbeddingCache | None, hidden: int,
                 tokens_per_tile: int) -> list[np.ndarray]:
    """One encoder forward over every tile of the batch that no cache entry answers -> one prompt table per
    request (float32 [rows, hidden]). encoder: uint8 [n, S, S, 3] -> float [n, tokens_per_tile, hidden]."""
    plans = [_image_tiles(request, cache) for request in requests]
    todo = [part[2] for parts in plans for part in parts if part[0] == "new" and len(part[2])]
    new = np.asarray(encoder(np.concatenate(todo))).reshape(-1, hidden) if todo else np.zeros((0, hidden), np.float32)
    tables, start = [], 0
    for parts in plans:
        pieces = []
        for part in parts:
            if part[0] == "cached":
                pieces.append(part[1])
                continue
            _, key, tiles = part
            rows = new[start:start + len(tiles) * tokens_per_tile]
            start += len(rows)
            if key is not None and cache is not None:
                cache.put(key, rows)
            pieces.append(rows)
        tables.append(np.concatenate(pieces) if pieces else np.zeros((0, hidden), np.float32))
    return tables
