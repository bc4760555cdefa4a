"""The request limits of the API and the wire, named once: the engine's SamplingParams checks against them, the
frontend's schemas and the tensor docs quote them."""

# The model card's limit: "Input + Output Token: 16K" (trained with 16384-token sequences).
MAX_CONTEXT = 16384
# max_tokens when a request names none; bounded by the context left after the prompt (the llm stage).
DEFAULT_MAX_TOKENS = 1024

# OpenAI's bounds.
MAX_STOP_STRINGS = 4              # `stop`
MAX_TOP_LOGPROBS = 20             # chat's `top_logprobs`
MAX_COMPLETION_LOGPROBS = 5       # the legacy completions endpoint's `logprobs`
MAX_TEMPERATURE = 2.0
MAX_PENALTY = 2.0                 # frequency and presence penalties lie in [-MAX_PENALTY, MAX_PENALTY]
MAX_REPETITION_PENALTY = 2.0      # HF / vLLM's repetition penalty lies in (0, MAX_REPETITION_PENALTY]
# `n`: choices per request. They share one prefill, but each decodes on its own: 16 choices cost the running batch
# 16 slots, so the bound keeps one request from taking half of the default `max_running` 32.
MAX_CHOICES = 16
MAX_CACHE_SALT_CHARS = 256        # vLLM's `cache_salt`: a tenant's key, not a document

# The wire's integer types (nanovl.serving.tensors): a value past them cannot be sent to Triton.
INT32_MAX = 2 ** 31 - 1           # max_tokens, min_tokens, top_k, logprobs, stop_token_ids
INT64_MAX = 2 ** 63 - 1           # seed
