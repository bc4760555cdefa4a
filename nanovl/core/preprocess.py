"""The preprocessing stage: chat messages -> prompt ids with image spans, and the tiles of every image.

Per request: parse the messages (image parts, `<img src>` tags), fetch its remote images concurrently, read each image's header (format, pixel cap, size after EXIF orientation), count
its tiles from the size alone, build the prompt and check it fits the context, and only then decode and tile.
A bad request fails alone, with a ClientError naming the image and the reason.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointConfig, load_config, load_tokenizer
from .errors import ClientError
from .fetch import Fetcher, FetchSettings
from .image_cache import SeenImages, extra_ids, image_key, model_identity
from .images import ImageLimits, data_url_bytes, load_rgb, open_image
from .prompt import Chat, build_input_ids, chat_template, parse_messages
from .tiling import TilingSettings, num_tiles, tile_image

# Lets a test or a local setup fetch from 127.0.0.1 without editing the model config.
ALLOW_PRIVATE_ENV = "NANOVL_ALLOW_PRIVATE_IMAGE_URLS"


@dataclass(frozen=True)
class PreprocessSettings:
    """The preprocessing stage's parameters (config.pbtxt `parameters`), with their defaults in one place."""

    # nim: NIM's prompt, whose token counts clients compare (nanovl.core.prompt); checkpoint: the tokenizer's own
    # chat_template, for a checkpoint whose template differs on purpose.
    chat_template: str = "nim"
    max_tiles: int = 12
    max_images: int = 4                       # per request; the model card's "Input Images Supported: 4"
    image_upscale_2x: bool = False            # the HF processor's quirk (nanovl.core.tiling)
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000        # decompression-bomb guard, checked before pixels are decoded
    # Loopback/private image hosts; also on with $NANOVL_ALLOW_PRIVATE_IMAGE_URLS=1 (tests, local setups).
    allow_private_image_urls: bool = False
    image_url_domains: tuple[str, ...] = ()   # allow-list of hosts (and their subdomains); empty: any public host
    image_fetch_connect_timeout_s: float = 5.0
    image_fetch_read_timeout_s: float = 10.0
    image_fetch_timeout_s: float = 30.0       # a whole fetch, redirects included
    image_fetch_max_redirects: int = 3
    # Images whose tiles were sent recently (their content keys and tile counts, a few bytes each): sent again,
    # one goes as its encoded bytes, neither decoded nor tiled, for the vision encoder's embedding cache to
    # answer (nanovl.core.image_cache). 0: every image is decoded and tiled here.
    image_cache_entries: int = 4096

    @property
    def tiling(self) -> TilingSettings:
        return TilingSettings(max_tiles=self.max_tiles, upscale_2x=self.image_upscale_2x)

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

    def fetch(self, environ=os.environ) -> FetchSettings:
        return FetchSettings(
            allow_private=self.allow_private_image_urls or environ.get(ALLOW_PRIVATE_ENV, "") == "1",
            allowed_domains=tuple(d.lower().lstrip(".") for d in self.image_url_domains),
            max_bytes=self.max_image_bytes, connect_timeout_s=self.image_fetch_connect_timeout_s,
            read_timeout_s=self.image_fetch_read_timeout_s, total_timeout_s=self.image_fetch_timeout_s,
            max_redirects=self.image_fetch_max_redirects)


@dataclass(frozen=True)
class Preprocessed:
    input_ids: np.ndarray   # int32 [prompt_len]
    tiles: np.ndarray       # uint8 [n, S, S, 3] of the images not in sources; n = 0 for a text-only prompt
    extra_ids: np.ndarray | None = None     # int64 [prompt_len]: image content keys at image positions, else 0
    image_keys: tuple[int, ...] = ()        # per image, its content key (nanovl.core.image_cache)
    tile_counts: tuple[int, ...] = ()       # per image
    sources: tuple[bytes, ...] = ()         # per image: its encoded bytes if sent without tiles, else b""


def _remote(chat: Chat) -> list[tuple[int, str]]:
    """(index, url) of the images to fetch over HTTP(S)."""
    return [(i, url) for i, url in enumerate(chat.image_urls) if url[:8].lower().startswith(("http://", "https://"))]


class Preprocessor:
    def __init__(self, config: CheckpointConfig, tokenizer, settings: PreprocessSettings = PreprocessSettings(),
                 record_dir: Path | None = None):
        """record_dir: where the stage's instances share their record of images sent (None: this one's own)."""
        self.config = config
        self.tokenizer = tokenizer
        self.settings = settings
        self.template = chat_template(settings.chat_template, tokenizer)   # a bad choice fails at load
        self.tiling = TilingSettings(tile_size=config.image_size, max_tiles=settings.tiling.max_tiles,
                                     use_thumbnail=settings.tiling.use_thumbnail,
                                     upscale_2x=settings.tiling.upscale_2x)
        self.seen = SeenImages(settings.image_cache_entries, record_dir)
        self.identity = model_identity(config.path)

    @classmethod
    def from_checkpoint(cls, path: str, settings: PreprocessSettings = PreprocessSettings(),
                        record_dir: Path | None = None) -> "Preprocessor":
        config = load_config(path)
        return cls(config, load_tokenizer(config), settings, record_dir)

    @cached_property
    def fetcher(self) -> Fetcher:
        return Fetcher(self.settings.fetch())   # its loop thread starts on the first remote URL

    def __call__(self, messages_json: bytes | str) -> Preprocessed:
        chat = self._parse(messages_json)
        remote = _remote(chat)
        return self._build(chat, self.fetcher.fetch_many(remote) if remote else [])

    def from_inputs(self, messages: bytes | None, prompt: bytes | None) -> Preprocessed:
        """The stage's two optional inputs, of which a request sends exactly one."""
        if (messages is None) == (prompt is None):
            raise ClientError("send exactly one of messages (a chat) and prompt (raw text)",
                              param="messages" if messages is None else "prompt")
        return self(messages) if prompt is None else self.raw_prompt(prompt)

    def raw_prompt(self, prompt: bytes | str) -> Preprocessed:
        """A completion prompt: no chat template, no images; <|begin_of_text|> first, as vLLM tokenizes it."""
        try:
            text = prompt.decode("utf-8") if isinstance(prompt, bytes) else prompt
        except UnicodeDecodeError:
            raise ClientError("prompt is not valid UTF-8", param="prompt") from None
        input_ids = np.asarray(self.tokenizer(text).input_ids, dtype=np.int32)
        if len(input_ids) >= self.config.max_context:
            raise ClientError(f"the prompt is {len(input_ids)} tokens; the context holds {self.config.max_context} "
                              "tokens, prompt and answer together", param="prompt", code="context_length_exceeded")
        side = self.config.image_size
        return Preprocessed(input_ids, np.zeros((0, side, side, 3), np.uint8))

    def close(self) -> None:
        if "fetcher" in vars(self):
            self.fetcher.close()

    def _parse(self, messages_json: bytes | str) -> Chat:
        try:
            messages = json.loads(messages_json)
        except (ValueError, UnicodeDecodeError):
            raise ClientError("messages is not valid JSON", param="messages") from None
        chat = parse_messages(messages)
        if len(chat.image_urls) > self.settings.max_images:
            raise ClientError(f"{len(chat.image_urls)} images in one request; at most {self.settings.max_images}",
                              param="messages", code="too_many_images")
        return chat

    def _source(self, index: int, url: str, fetched: dict[int, bytes | ClientError]) -> bytes:
        if index in fetched:
            if isinstance(fetched[index], ClientError):
                raise fetched[index]
            return fetched[index]
        if url[:5].lower() == "data:":
            return data_url_bytes(url, index=index, limits=self.settings.limits)
        scheme = url.split(":", 1)[0] if ":" in url else ""
        raise ClientError(f"image {index}: URL scheme {scheme!r} is not accepted: use https, http or a base64 "
                          "data URL", param="messages", code="invalid_image_url")

    def _build(self, chat: Chat, fetched: list[bytes | ClientError]) -> Preprocessed:
        """fetched: what _remote(chat) URLs returned, in that order."""
        by_index = {i: body for (i, _), body in zip(_remote(chat), fetched)}
        sources = [self._source(i, url, by_index) for i, url in enumerate(chat.image_urls)]
        keys = [image_key(data, self.tiling, self.identity) for data in sources]
        seen = [self.seen.get(key) for key in keys]   # a tile count: sent before, goes as its bytes
        opened = [open_image(data, index=i, limits=self.settings.limits) if count is None else None
                  for i, (data, count) in enumerate(zip(sources, seen))]
        # Tile counts follow from the sizes alone: a prompt that cannot fit is refused before any decoding.
        counts = [num_tiles(*image.size, self.tiling) if count is None else count
                  for image, count in zip(opened, seen)]
        input_ids = build_input_ids(self.tokenizer, self.config, chat, counts, template=self.template)
        self._check_context(len(input_ids), counts)
        fresh = [(image, count) for image, count in zip(opened, counts) if image is not None]
        tiles = [tile_image(load_rgb(image), self.tiling) for image, _ in fresh]
        assert [len(t) for t in tiles] == [c for _, c in fresh], "tile counts differ from the prompt's image spans"
        for key, count, image in zip(keys, counts, opened):
            if image is not None:
                self.seen.add(key, count)
        side = self.config.image_size
        stacked = np.concatenate(tiles) if tiles else np.zeros((0, side, side, 3), np.uint8)
        return Preprocessed(input_ids, stacked,
                            extra_ids(input_ids, keys, counts, self.config.vocab_size, self.config.tokens_per_tile),
                            tuple(keys), tuple(counts),
                            tuple(b"" if image is not None else data for data, image in zip(sources, opened)))

    def _check_context(self, prompt_len: int, counts: list[int]) -> None:
        limit = self.config.max_context
        if prompt_len < limit:
            return
        image_tokens = sum(counts) * self.config.tokens_per_tile + 2 * len(counts)
        raise ClientError(
            f"the prompt is {prompt_len} tokens ({prompt_len - image_tokens} text tokens + {image_tokens} image "
            f"tokens for {len(counts)} images of {sum(counts)} tiles); the context holds {limit} tokens, prompt "
            "and answer together", param="messages", code="context_length_exceeded")
