"""The OpenAI-compatible HTTP facade: validates requests, streams them through a Backend (Triton's ensemble in
production), answers in OpenAI's shapes (built with the `openai` package's own types)."""
