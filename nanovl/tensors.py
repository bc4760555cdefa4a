"""The Triton-level API: every model's input and output tensors, in one place.

`model_repository/*/config.pbtxt` are generated from these (`nanovl.triton_config`), and a test checks that
the committed files equal the generated ones. Direct gRPC clients depend on these names: keep them stable.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                 # Triton config type: TYPE_STRING is BYTES on the wire
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""


# ensemble / preprocessing input
MESSAGES = Tensor("messages", "TYPE_STRING", (1,), doc="JSON list of OpenAI chat messages (text and image_url parts)")
# sampling: optional everywhere; absent means the default of SamplingParams
MAX_TOKENS = Tensor("max_tokens", "TYPE_INT32", (1,), True, "most tokens to generate")
TEMPERATURE = Tensor("temperature", "TYPE_FP32", (1,), True, "0 = greedy")
TOP_P = Tensor("top_p", "TYPE_FP32", (1,), True, "nucleus sampling mass, (0, 1]")
TOP_K = Tensor("top_k", "TYPE_INT32", (1,), True, "0 = off")
SEED = Tensor("seed", "TYPE_INT64", (1,), True, "sampling seed")
SAMPLING = (MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K, SEED)

# preprocessing -> vision_encoder / llm
INPUT_IDS = Tensor("input_ids", "TYPE_INT32", (-1,), doc="prompt ids; ids >= vocab_size are image embedding rows")
TILES = Tensor("tiles", "TYPE_UINT8", (-1, -1, -1, 3), doc="RGB tiles [n, 512, 512, 3] of all images, in order")
# vision_encoder -> llm
PROMPT_TABLE = Tensor("prompt_embedding_table", "TYPE_FP32", (-1, -1),
                      doc="[rows, hidden] image embeddings; row k is prompt id vocab_size + k")
# llm -> detokenizer (one response per batch of new tokens)
OUTPUT_IDS = Tensor("output_ids", "TYPE_INT32", (-1,), doc="left-context ids followed by the new ids")
NEW_OFFSET = Tensor("new_token_offset", "TYPE_INT32", (1,), doc="how many of output_ids are context")
FINISH_REASON = Tensor("finish_reason", "TYPE_STRING", (1,), doc="'' until the last response: stop | length")
PROMPT_TOKENS = Tensor("prompt_tokens", "TYPE_INT32", (1,), doc="prompt length, image tokens included")
COMPLETION_TOKENS = Tensor("completion_tokens", "TYPE_INT32", (1,), doc="tokens generated so far")
# detokenizer -> client
TEXT_OUTPUT = Tensor("text_output", "TYPE_STRING", (1,), doc="UTF-8 text added by this response")
TOKEN_IDS = Tensor("token_ids", "TYPE_INT32", (-1,), doc="the new token ids of this response")

MODELS: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {
    "preprocessing": ((MESSAGES,), (INPUT_IDS, TILES)),
    "vision_encoder": ((TILES,), (PROMPT_TABLE,)),
    "llm": ((INPUT_IDS, PROMPT_TABLE, *SAMPLING),
            (OUTPUT_IDS, NEW_OFFSET, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)),
    "detokenizer": ((OUTPUT_IDS, NEW_OFFSET, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS),
                    (TEXT_OUTPUT, TOKEN_IDS, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)),
    "ensemble": ((MESSAGES, *SAMPLING), (TEXT_OUTPUT, TOKEN_IDS, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)),
}
DECOUPLED = {"llm", "ensemble"}
