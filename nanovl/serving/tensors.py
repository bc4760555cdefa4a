"""The Triton-level API: every model's input and output tensors, in one place.

`model_repository/*/config.pbtxt` are generated from these (`nanovl.serving.triton_config`), and a test checks that
the committed files equal the generated ones. Direct gRPC clients depend on these names: keep them stable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.limits import MAX_CACHE_SALT_CHARS, MAX_CHOICES, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                 # Triton config type: TYPE_STRING is BYTES on the wire
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""


_NUMPY = {"TYPE_STRING": np.object_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_FP32": np.float32,
          "TYPE_FP64": np.float64, "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8}


def to_array(tensor: Tensor, value) -> np.ndarray:
    """A request value (a scalar, or a list for a [-1] tensor) as the tensor's numpy array; text as UTF-8."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if tensor.dtype == "TYPE_STRING":
        values = [v.encode() if isinstance(v, str) else v for v in values]
    return np.array(values, dtype=_NUMPY[tensor.dtype])


# ensemble / preprocessing input: exactly one of messages (chat template applied) and prompt (raw text)
MESSAGES = Tensor("messages", "TYPE_STRING", (1,), True, "JSON list of OpenAI chat messages (text and image_url parts)")
PROMPT = Tensor("prompt", "TYPE_STRING", (1,), True, "raw prompt text, tokenized as is with <|begin_of_text|> first")
# sampling: optional everywhere; absent means the default of SamplingParams
MAX_TOKENS = Tensor("max_tokens", "TYPE_INT32", (1,), True, "most tokens to generate")
TEMPERATURE = Tensor("temperature", "TYPE_FP32", (1,), True, "0 = greedy")
TOP_P = Tensor("top_p", "TYPE_FP32", (1,), True, "nucleus sampling mass, (0, 1]")
TOP_K = Tensor("top_k", "TYPE_INT32", (1,), True, "0 = off")
SEED = Tensor("seed", "TYPE_INT64", (1,), True, "sampling seed")
MIN_TOKENS = Tensor("min_tokens", "TYPE_INT32", (1,), True, "no eos and no stop string before this many tokens")
REPETITION_PENALTY = Tensor("repetition_penalty", "TYPE_FP32", (1,), True, "(0, 2]; 1 = off")
FREQUENCY_PENALTY = Tensor("frequency_penalty", "TYPE_FP32", (1,), True, "[-2, 2]; 0 = off")
PRESENCE_PENALTY = Tensor("presence_penalty", "TYPE_FP32", (1,), True, "[-2, 2]; 0 = off")
STOP = Tensor("stop", "TYPE_STRING", (-1,), True, f"stop strings (up to {MAX_STOP_STRINGS}), never part of the text")
STOP_TOKEN_IDS = Tensor("stop_token_ids", "TYPE_INT32", (-1,), True, "extra stop ids besides the eos ids")
LOGPROBS = Tensor("logprobs", "TYPE_INT32", (1,), True, f"return log-probabilities and this many alternatives (0-{MAX_TOP_LOGPROBS})")
SAMPLING = (MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K, SEED, MIN_TOKENS, REPETITION_PENALTY, FREQUENCY_PENALTY,
            PRESENCE_PENALTY, STOP, STOP_TOKEN_IDS, LOGPROBS)
# Request settings that are not SamplingParams fields by their wire names (TensorRT-LLM backend's name for n).
NUM_RETURN_SEQUENCES = Tensor("num_return_sequences", "TYPE_INT32", (1,), True,
                              f"n: choices (1-{MAX_CHOICES}) sharing one prefill; responses carry sequence_index")
CACHE_SALT = Tensor("cache_salt", "TYPE_STRING", (1,), True,
                    f"vLLM's: prompts with another salt never share cached KV (up to {MAX_CACHE_SALT_CHARS} chars)")
REQUEST = (*SAMPLING, NUM_RETURN_SEQUENCES, CACHE_SALT)

# preprocessing -> vision_encoder / llm (optional on llm itself, whose other use is a stop request)
INPUT_IDS = Tensor("input_ids", "TYPE_INT32", (-1,), doc="prompt ids; ids >= vocab_size are image embedding rows")
LLM_INPUT_IDS = Tensor(INPUT_IDS.name, INPUT_IDS.dtype, INPUT_IDS.dims, True, INPUT_IDS.doc)
TILES = Tensor("tiles", "TYPE_UINT8", (1, -1, -1, -1, 3),
               doc="RGB tiles [1, n, 512, 512, 3] of the images not in image_sources, in order")
PROMPT_EXTRA_IDS = Tensor("prompt_extra_ids", "TYPE_INT64", (-1,),
                          doc="[prompt_len] 0 for text; an image's content hash at its positions (KV-cache keys)")
LLM_PROMPT_EXTRA_IDS = Tensor(PROMPT_EXTRA_IDS.name, PROMPT_EXTRA_IDS.dtype, PROMPT_EXTRA_IDS.dims, True,
                              PROMPT_EXTRA_IDS.doc)
# preprocessing -> vision_encoder: per image, its content hash (image bytes, tiling settings, checkpoint) and tile
# count; an image whose embeddings the encoder likely holds is sent as its encoded bytes instead of tiles.
IMAGE_HASHES = Tensor("image_hashes", "TYPE_INT64", (1, -1), True, "[1, images] content hash of each image (>= 1)")
IMAGE_TILE_COUNTS = Tensor("image_tile_counts", "TYPE_INT32", (1, -1), True, "[1, images] tiles of each image")
IMAGE_SOURCES = Tensor("image_sources", "TYPE_STRING", (1, -1), True,
                       "[1, images] encoded bytes of an image sent without tiles ('' for one in tiles)")
IMAGE_TILING = Tensor("image_tiling", "TYPE_INT32", (1, 4), True,
                      "[1, 4] tile size, max tiles, thumbnail, 2x up-scale: how to tile image_sources on a miss")
VISION_IMAGES = (IMAGE_HASHES, IMAGE_TILE_COUNTS, IMAGE_SOURCES, IMAGE_TILING)
# vision_encoder -> llm
PROMPT_TABLE = Tensor("prompt_embedding_table", "TYPE_FP32", (1, -1, -1), True,
                      doc="[1, rows, hidden] image embeddings; row k is prompt id vocab_size + k")
# Control requests to llm alone (nanovl.serving.control): a stop ends the stream of that Triton request id now
# (frees its engine slot) and is answered by an empty final response; a status is answered by one response
# with request_known and loaded_at only.
STOP_REQUEST = Tensor("stop_request", "TYPE_STRING", (1,), True, "control: the request id of a stream to stop")
STATUS_REQUEST = Tensor("status_request", "TYPE_STRING", (1,), True,
                        "control: a request id to answer request_known and loaded_at for")
REQUEST_KNOWN = Tensor("request_known", "TYPE_BOOL", (1,), doc="status reply: llm is generating or queueing it")
LOADED_AT = Tensor("loaded_at", "TYPE_FP64", (1,), doc="status reply: unix time this llm stage loaded")
# llm -> detokenizer (one response per batch of new tokens)
OUTPUT_IDS = Tensor("output_ids", "TYPE_INT32", (-1,), doc="left-context ids followed by the new ids")
NEW_OFFSET = Tensor("new_token_offset", "TYPE_INT32", (1,), doc="how many of output_ids are context")
FINISH_REASON = Tensor("finish_reason", "TYPE_STRING", (1,), doc="'' until the last response: stop | length")
PROMPT_TOKENS = Tensor("prompt_tokens", "TYPE_INT32", (1,), doc="prompt length, image tokens included")
COMPLETION_TOKENS = Tensor("completion_tokens", "TYPE_INT32", (1,), doc="tokens generated so far")
TRIM_BYTES = Tensor("trim_bytes", "TYPE_INT32", (1,), doc="bytes to drop from the end of the new text (a stop string)")
TOKEN_LOGPROBS = Tensor("token_logprobs", "TYPE_FP32", (-1,), doc="log-probability of each new token ([0] if not asked)")
TOP_LOGPROB_IDS = Tensor("top_logprob_ids", "TYPE_INT32", (-1, -1), doc="[new tokens, k] best alternatives")
TOP_LOGPROBS = Tensor("top_logprob_values", "TYPE_FP32", (-1, -1), doc="[new tokens, k] their log-probabilities")
SEQUENCE_INDEX = Tensor("sequence_index", "TYPE_INT32", (1,), doc="the choice (0 to n-1) this response belongs to")
CACHED_TOKENS = Tensor("cached_tokens", "TYPE_INT32", (1,), doc="prompt tokens served from the prefix cache")
# detokenizer -> client
TEXT_OUTPUT = Tensor("text_output", "TYPE_STRING", (1,), doc="UTF-8 text added by this response")
TOKEN_IDS = Tensor("token_ids", "TYPE_INT32", (-1,), doc="the new token ids of this response")
TOKENS = Tensor("tokens", "TYPE_STRING", (-1,), doc="UTF-8 bytes of each new token (with logprobs)")
TOP_LOGPROB_TOKENS = Tensor("top_logprob_tokens", "TYPE_STRING", (-1, -1), doc="bytes of each alternative")

_LLM_OUT = (OUTPUT_IDS, NEW_OFFSET, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS, TRIM_BYTES, TOKEN_LOGPROBS,
            TOP_LOGPROB_IDS, TOP_LOGPROBS, SEQUENCE_INDEX, CACHED_TOKENS)
_CLIENT_OUT = (TEXT_OUTPUT, TOKEN_IDS, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS, TOKEN_LOGPROBS, TOKENS,
               TOP_LOGPROBS, TOP_LOGPROB_TOKENS, SEQUENCE_INDEX, CACHED_TOKENS)

MODELS: dict[str, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {
    "preprocessing": ((MESSAGES, PROMPT), (INPUT_IDS, TILES, PROMPT_EXTRA_IDS, *VISION_IMAGES)),
    "vision_encoder": ((TILES, *VISION_IMAGES), (PROMPT_TABLE,)),
    "llm": ((LLM_INPUT_IDS, PROMPT_TABLE, LLM_PROMPT_EXTRA_IDS, *REQUEST, STOP_REQUEST, STATUS_REQUEST),
            (*_LLM_OUT, REQUEST_KNOWN, LOADED_AT)),
    "detokenizer": (_LLM_OUT, _CLIENT_OUT),
    "ensemble": ((MESSAGES, PROMPT, *REQUEST), _CLIENT_OUT),
}
DECOUPLED = {"llm", "ensemble"}
