"""Token ids -> text deltas that concatenate to exactly the one-shot decode, whatever the characters.

Stateless by design: each streamed response of the `llm` stage reaches the detokenizer as its own request
(one instance keeps them in order, but any per-request state would be keyed by a request id that direct
clients may leave empty). So `llm` sends each batch of new tokens with a few tokens of left context
(`StreamFramer`), and the delta is computed from those alone.

Hand-written rather than `tokenizer.decode` of growing prefixes: Llama 3's tokenizer is byte-level BPE, so
text is the UTF-8 decoding of the concatenated token bytes. A character split across responses leaves at most
3 undecoded bytes, which the left context carries; decoding only the new bytes is O(new), not O(sequence).
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass

# A pending (incomplete) UTF-8 sequence is at most 3 bytes, and every non-skipped token carries at least
# one byte, so 3 non-skipped tokens of left context always hold it.
CONTEXT_TOKENS = 3


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2 / Llama 3's ByteLevel byte-to-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@dataclass(frozen=True)
class TokenBytes:
    """Per-id byte strings; skipped (special) and out-of-tokenizer ids map to b''."""

    table: tuple[bytes, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenBytes":
        backend = tokenizer.backend_tokenizer
        added = backend.get_added_tokens_decoder()
        decoder = _byte_decoder()
        table = []
        for token_id in range(backend.get_vocab_size(with_added_tokens=True)):
            if token_id in added:
                token = added[token_id]
                table.append(b"" if token.special else token.content.encode())
            else:
                piece = backend.id_to_token(token_id)
                table.append(bytes(decoder[c] for c in piece) if piece is not None else b"")
        return cls(tuple(table))

    def join(self, ids) -> bytes:
        table, size = self.table, len(self.table)
        return b"".join(table[i] if 0 <= i < size else b"" for i in ids)

    def is_skipped(self, token_id: int) -> bool:
        return not (0 <= token_id < len(self.table)) or not self.table[token_id]


def _pending_tail(data: bytes) -> bytes:
    """The trailing bytes an incremental UTF-8 decoder would still hold back."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data[-4:] if len(data) > 4 else data)   # a lead byte ends any earlier sequence
    return decoder.getstate()[0]


def text_delta(token_bytes: TokenBytes, ids, new_offset: int, final: bool, trim_bytes: int = 0) -> str:
    """Text added by ids[new_offset:], given ids[:new_offset] as left context (see StreamFramer); the last
    `trim_bytes` bytes are dropped (where a stop string began).

    Held-back bytes of a character not yet complete are emitted by the response that completes it, or by
    the final response (as U+FFFD, exactly as the one-shot decode would).
    """
    pending = _pending_tail(token_bytes.join(ids[:new_offset]))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(pending)
    new = token_bytes.join(ids[new_offset:])
    return decoder.decode(new[:len(new) - trim_bytes] if trim_bytes else new, final=final)


class StreamFramer:
    """Kept by `llm` per request: frames each batch of new tokens with enough left context for text_delta."""

    def __init__(self, token_bytes: TokenBytes):
        self._token_bytes = token_bytes
        self._context: list[int] = []

    def frame(self, new_ids: list[int]) -> tuple[list[int], int]:
        """-> (context + new ids, number of context ids in front)."""
        framed = self._context + list(new_ids)
        kept, seen = len(framed), 0
        while kept > 0 and seen < CONTEXT_TOKENS:
            kept -= 1
            seen += not self._token_bytes.is_skipped(framed[kept])
        offset = len(self._context)
        self._context = framed[kept:]
        return framed, offset


def full_text(token_bytes: TokenBytes, ids) -> str:
    return token_bytes.join(ids).decode("utf-8", errors="replace")
