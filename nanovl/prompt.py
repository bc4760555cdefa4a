"""OpenAI-style chat messages -> the token ids the LLM sees, with each image's embedding span spliced in.

Each image becomes `<img>` + one id per image embedding + `</img>` (MODEL-FACTS 3.3). The embedding ids are
`vocab_size + k`, k running over all images of the request: TensorRT-LLM reads ids >= vocab_size as rows of
the prompt embedding table, and the reference engine does the same, so both engines share one path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checkpoint import IMAGE_END_TOKEN, IMAGE_START_TOKEN, CheckpointConfig
from .errors import ClientError

ROLES = ("system", "user", "assistant")
# Stands for an image while the chat template renders; private-use characters no tokenizer merges across.
_IMAGE_SENTINEL = "\ue000nanovl-image\ue000"


@dataclass(frozen=True)
class Chat:
    """Messages with string content, images marked in place, and the image sources in order."""

    messages: list[dict] = field(default_factory=list)
    image_urls: list[str] = field(default_factory=list)


def parse_messages(messages: object) -> Chat:
    """Validate OpenAI chat messages (string content or text / image_url parts) into a Chat."""
    if not isinstance(messages, list) or not messages:
        raise ClientError("messages must be a non-empty list", param="messages")
    out, urls = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ClientError(f"messages[{i}]: role must be one of {', '.join(ROLES)}", param="messages")
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                elif kind == "image_url" and message["role"] == "user":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise ClientError(f"messages[{i}].content[{j}]: image_url.url must be a string",
                                          param="messages")
                    urls.append(url)
                    pieces.append(_IMAGE_SENTINEL)
                else:
                    raise ClientError(f"messages[{i}].content[{j}]: unsupported content part {kind!r}",
                                      param="messages")
            # Parts joined by newlines: an image first reads '<image>\n{text}', as the model's own chat().
            text = "\n".join(pieces)
        elif content is None and message["role"] == "assistant":
            text = ""
        else:
            raise ClientError(f"messages[{i}]: content must be a string or a list of parts", param="messages")
        if _IMAGE_SENTINEL in text and not isinstance(content, list):
            raise ClientError(f"messages[{i}]: content contains a reserved character", param="messages")
        out.append({"role": message["role"], "content": text})
    return Chat(out, urls)


def render(tokenizer, chat: Chat) -> str:
    return tokenizer.apply_chat_template(chat.messages, tokenize=False, add_generation_prompt=True)


def build_input_ids(tokenizer, config: CheckpointConfig, chat: Chat, tiles_per_image: list[int]) -> np.ndarray:
    """-> input_ids: int32 [prompt_len], image embedding positions as ids >= config.vocab_size."""
    segments = render(tokenizer, chat).split(_IMAGE_SENTINEL)
    if len(segments) - 1 != len(tiles_per_image):
        raise ClientError("the chat template dropped or duplicated an image placeholder", param="messages")
    start, end = tokenizer.convert_tokens_to_ids([IMAGE_START_TOKEN, IMAGE_END_TOKEN])
    ids: list[int] = []
    next_row = config.vocab_size
    for i, segment in enumerate(segments):
        # The template already carries <|begin_of_text|>: no special tokens added here (as the model's chat()).
        ids.extend(tokenizer(segment, add_special_tokens=False).input_ids)
        if i < len(tiles_per_image):
            rows = tiles_per_image[i] * config.tokens_per_tile
            ids.append(start)
            ids.extend(range(next_row, next_row + rows))
            ids.append(end)
            next_row += rows
    return np.asarray(ids, dtype=np.int32)
