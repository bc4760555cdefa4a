"""The preprocessing and vision_encoder stages' image tensors <-> nanovl.core.image_cache's terms, minus Triton."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.image_cache import VisionRequest, tiling_of, tiling_row
from ..core.preprocess import Preprocessed
from ..core.tiling import TilingSettings
from . import tensors as T


def preprocessed_outputs(result: Preprocessed, tiling: TilingSettings) -> dict[str, np.ndarray]:
    """A Preprocessed -> the preprocessing stage's output tensors (per-image tensors carry a batch dim of 1)."""
    extra = result.extra_ids if result.extra_ids is not None else np.zeros(len(result.input_ids), np.int64)
    return {
        T.INPUT_IDS.name: result.input_ids,
        T.TILES.name: np.ascontiguousarray(result.tiles)[None],
        T.PROMPT_EXTRA_IDS.name: extra.astype(np.int64),
        T.IMAGE_HASHES.name: np.array(result.image_keys, np.int64).reshape(1, -1),
        T.IMAGE_TILE_COUNTS.name: np.array(result.tile_counts, np.int32).reshape(1, -1),
        T.IMAGE_SOURCES.name: np.array(list(result.sources), np.object_).reshape(1, -1),
        T.IMAGE_TILING.name: tiling_row(tiling)[None],
    }


def vision_request(inputs: Callable[[str], "np.ndarray | None"]) -> VisionRequest:
    """One vision_encoder request's tensors -> a VisionRequest; without image_hashes (a client sending tiles
    alone) its tiles are encoded as they are, uncached."""
    tiles = inputs(T.TILES.name)[0]
    keys = inputs(T.IMAGE_HASHES.name)
    if keys is None:
        return VisionRequest(tiles)
    counts, sources, tiling = (inputs(t.name) for t in (T.IMAGE_TILE_COUNTS, T.IMAGE_SOURCES, T.IMAGE_TILING))
    keys = keys.reshape(-1).tolist()
    counts = counts.reshape(-1).tolist() if counts is not None else []
    sources = [bytes(s) for s in sources.reshape(-1)] if sources is not None else []
    if len(counts) != len(keys) or len(sources) != len(keys) or (any(sources) and tiling is None):
        return VisionRequest(tiles)   # inconsistent image tensors: encode what was sent, cache nothing
    return VisionRequest(tiles, keys, counts, sources, tiling_of(tiling) if tiling is not None else None)


RECORD_PREFIX = "nanovl-preprocessing-"


def record_dir(server_pid: int) -> Path:
    """Where the preprocessing instances of one tritonserver (their parent process) share their record of images
    sent (nanovl.core.image_cache.SeenImages); the records of servers that are gone are removed first."""
    remove_stale_records()
    return Path(tempfile.gettempdir()) / f"{RECORD_PREFIX}{server_pid}"


def remove_stale_records() -> int:
    """Deletes the record directories of tritonservers no longer running. -> how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(RECORD_PREFIX + "*"):
        pid = path.name[len(RECORD_PREFIX):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True
