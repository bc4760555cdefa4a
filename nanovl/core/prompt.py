"""OpenAI-style chat messages -> the token ids the LLM sees, with each image's embedding span spliced in.

The prompt is NIM's (its documented usage counts 3372 and 3517 prompt tokens, which exactly one rendering
gives): Megatron-LM's `llama_nemotron_8b` prompt format, the Llama-3.1 header format with a system turn that
always begins `detailed thinking off`. NIM_CHAT_TEMPLATE renders it; its rules:
- a first message with role system adds its trimmed text after `detailed thinking off` and a blank line;
  without one the system turn is `detailed thinking off` alone. There is no "Cutting Knowledge Date" block;
- user and assistant turns carry their content trimmed; the prompt ends with the assistant header;
- a system message anywhere but first is dropped, as NIM's template drops it (its loop renders only user
  and assistant turns): following NIM exactly, not guessing where the text would have gone;
- with `tools` (OpenAI function definitions), the system turn ends with a blank line and
  `<AVAILABLE_TOOLS>[...]</AVAILABLE_TOOLS>`, each tool's `function` object (or the tool itself) as JSON.
The stage parameter `chat_template=checkpoint` renders with the checkpoint's own template instead.

Each image becomes `<img>` + one id per image embedding + `</img>` (MODEL-FACTS 3.3); an image part followed by
a text part reads `<img>...</img>\n{text}`. The embedding ids are `vocab_size + k`, k running over all images of
the request: TensorRT-LLM reads ids >= vocab_size as rows of the prompt embedding table, and the reference
engine does the same, so both engines share one path.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import IMAGE_CONTEXT_TOKEN, IMAGE_END_TOKEN, IMAGE_START_TOKEN, CheckpointConfig
from .errors import ClientError, ServerError

ROLES = ("system", "user", "assistant")
CHAT_TEMPLATES = ("nim", "checkpoint")   # the preprocessing stage's `chat_template` parameter
# NIM's prompt (see the module docstring), written from the behaviour of Megatron-LM's `llama_nemotron_template`
# (megatron/training/tokenizer/multimodal_tokenizer.py). Every tag strips its whitespace: only the quoted
# strings reach the prompt. `tools is not none` as there: an empty list still renders an empty tool block.
NIM_CHAT_TEMPLATE = (
    "{%- set system = 'detailed thinking off' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = system + '\\n\\n' + (messages[0]['content'] | trim) -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n' + system -}}"
    "{%- if tools is defined and tools is not none -%}"
    "{{- '\\n\\n<AVAILABLE_TOOLS>[' -}}"
    "{%- for tool in tools -%}"
    "{{- (tool.function if tool.function is defined else tool) | tojson -}}"
    "{{- '' if loop.last else ', ' -}}"
    "{%- endfor -%}"
    "{{- ']</AVAILABLE_TOOLS>' -}}"
    "{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- for message in messages if message['role'] in ('user', 'assistant') -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim)"
    " + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
# Stands for an image while the chat template renders; private-use characters no tokenizer merges across.
_IMAGE_SENTINEL = "\ue000nanovl-image\ue000"
# NIM's image tags in plain-text content: <img src="URL" /> (also single quotes, or quotes escaped as \").
_IMG_TAG = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*(?P<q>\\?[\"'])(?P<url>.*?)(?P=q)[^>]*>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Chat:
    """Messages with string content, images marked in place, and the image sources in order."""

    messages: list[dict] = field(default_factory=list)
    image_urls: list[str] = field(default_factory=list)


def _image_tags(text: str) -> tuple[str, list[str]]:
    """NIM's `<img src="...">` tags in plain text -> the text with a sentinel per tag, and the tags' URLs."""
    urls = [html.unescape(m.group("url")) for m in _IMG_TAG.finditer(text)]
    return _IMG_TAG.sub(_IMAGE_SENTINEL, text), urls


def _content_text(i: int, role: str, content: object) -> tuple[str, list[str]]:
    """One message's content -> text with a sentinel where each image goes, and the images' URLs in order."""
    if isinstance(content, str):
        return _image_tags(content) if role == "user" else (content, [])
    if content is None and role == "assistant":
        return "", []
    if not isinstance(content, list):
        raise ClientError(f"messages[{i}]: content must be a string or a list of parts", param="messages")
    pieces, urls = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text, tag_urls = _image_tags(part["text"]) if role == "user" else (part["text"], [])
            pieces.append(text)
            urls.extend(tag_urls)
        elif kind == "image_url" and role == "user":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ClientError(f"messages[{i}].content[{j}]: image_url.url must be a string", param="messages")
            urls.append(url)
            pieces.append(_IMAGE_SENTINEL)
        else:
            raise ClientError(f"messages[{i}].content[{j}]: unsupported content part {kind!r}", param="messages")
    # Parts joined by newlines: an image first reads '<image>\n{text}', as the model's own chat() writes it.
    return "\n".join(pieces), urls


def _place_images(i: int, text: str, count: int) -> str:
    """Images go where the text says `<image>` when it says so once per image (the model's chat() and vLLM
    treat the context token as the placeholder); otherwise where their parts or tags are."""
    placeholders = text.count(IMAGE_CONTEXT_TOKEN)
    if not count or not placeholders:
        return text
    if placeholders != count:
        raise ClientError(f"messages[{i}]: {placeholders} {IMAGE_CONTEXT_TOKEN} placeholders for {count} images",
                          param="messages", code="image_placeholder_mismatch")
    # Drop each image part (and the newline that joined it), then put the images at the placeholders.
    for joined in (_IMAGE_SENTINEL + "\n", "\n" + _IMAGE_SENTINEL, _IMAGE_SENTINEL):
        text = text.replace(joined, "")
    return text.replace(IMAGE_CONTEXT_TOKEN, _IMAGE_SENTINEL)


def _check_unicode(i: int, *texts: str) -> None:
    """JSON can carry lone surrogates (\\ud800), on which the tokenizer and UTF-8 encoders raise: refused here."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ClientError(f"messages[{i}]: content is not valid Unicode (a lone surrogate)",
                              param="messages") from None


def parse_messages(messages: object) -> Chat:
    """Validate OpenAI chat messages (string content, text / image_url parts, `<img src>` tags) into a Chat."""
    if not isinstance(messages, list) or not messages:
        raise ClientError("messages must be a non-empty list", param="messages")
    out, urls = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ClientError(f"messages[{i}]: role must be one of {', '.join(ROLES)}", param="messages")
        content = message.get("content")
        if (isinstance(content, str) and _IMAGE_SENTINEL in content) or (
                isinstance(content, list) and any(isinstance(p, dict) and _IMAGE_SENTINEL in str(p.get("text", ""))
                                                  for p in content)):
            raise ClientError(f"messages[{i}]: content contains a reserved character", param="messages")
        text, message_urls = _content_text(i, message["role"], content)
        _check_unicode(i, text, *message_urls)
        out.append({"role": message["role"], "content": _place_images(i, text, len(message_urls))})
        urls.extend(message_urls)
    return Chat(out, urls)


def chat_template(choice: str, tokenizer) -> str | None:
    """The stage parameter `chat_template` -> the template build_input_ids renders with (None: the checkpoint's)."""
    if choice not in CHAT_TEMPLATES:
        raise ServerError(f"parameter chat_template: {choice!r} is not one of {', '.join(CHAT_TEMPLATES)}")
    if choice == "nim":
        return NIM_CHAT_TEMPLATE
    if not tokenizer.chat_template:
        raise ServerError("parameter chat_template=checkpoint, but the checkpoint's tokenizer has no chat_template")
    return None


def render(tokenizer, chat: Chat, template: str | None = NIM_CHAT_TEMPLATE, tools: list[dict] | None = None) -> str:
    """The prompt text, each image a sentinel; template None is the checkpoint's own."""
    return tokenizer.apply_chat_template(chat.messages, chat_template=template, tools=tools, tokenize=False,
                                         add_generation_prompt=True)


def build_input_ids(tokenizer, config: CheckpointConfig, chat: Chat, tiles_per_image: list[int], *,
                    template: str | None = NIM_CHAT_TEMPLATE, tools: list[dict] | None = None) -> np.ndarray:
    """-> input_ids: int32 [prompt_len], image embedding positions as ids >= config.vocab_size."""
    segments = render(tokenizer, chat, template, tools).split(_IMAGE_SENTINEL)
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
