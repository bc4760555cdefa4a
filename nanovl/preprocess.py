"""The preprocessing stage: chat messages -> prompt ids with image spans, and the tiles of every image."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .checkpoint import CheckpointConfig, load_config, load_tokenizer
from .errors import ClientError
from .images import ImageLimits, decode_image, source_bytes
from .prompt import build_input_ids, parse_messages
from .tiling import TilingSettings, tile_image


@dataclass(frozen=True)
class Preprocessed:
    input_ids: np.ndarray   # int32 [prompt_len]
    tiles: np.ndarray       # uint8 [n, S, S, 3]; n = 0 for a text-only prompt


class Preprocessor:
    def __init__(self, config: CheckpointConfig, tokenizer, *, tiling: TilingSettings, max_images: int,
                 limits: ImageLimits = ImageLimits()):
        self.config = config
        self.tokenizer = tokenizer
        self.tiling = tiling
        self.max_images = max_images
        self.limits = limits

    @classmethod
    def from_checkpoint(cls, path: str, *, max_tiles: int = 12, max_images: int = 4) -> "Preprocessor":
        config = load_config(path)
        tiling = TilingSettings(tile_size=config.image_size, max_tiles=max_tiles)
        return cls(config, load_tokenizer(config), tiling=tiling, max_images=max_images)

    def __call__(self, messages_json: bytes | str) -> Preprocessed:
        try:
            messages = json.loads(messages_json)
        except (ValueError, UnicodeDecodeError):
            raise ClientError("messages is not valid JSON", param="messages") from None
        chat = parse_messages(messages)
        if len(chat.image_urls) > self.max_images:
            raise ClientError(f"{len(chat.image_urls)} images in one request; at most {self.max_images}",
                              param="messages", code="too_many_images")
        tiles = [tile_image(decode_image(source_bytes(url, index=i, limits=self.limits), index=i,
                                         limits=self.limits), self.tiling)
                 for i, url in enumerate(chat.image_urls)]
        input_ids = build_input_ids(self.tokenizer, self.config, chat, [len(t) for t in tiles])
        if len(input_ids) >= self.config.max_context:
            raise ClientError(f"the prompt is {len(input_ids)} tokens (images included); the context holds "
                              f"{self.config.max_context}", param="messages", code="context_length_exceeded")
        side = self.config.image_size
        stacked = np.concatenate(tiles) if tiles else np.zeros((0, side, side, 3), np.uint8)
        return Preprocessed(input_ids, stacked)
