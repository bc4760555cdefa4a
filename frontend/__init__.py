"""The OpenAI-compatible HTTP facade: validates requests, streams them through Triton's ensemble, answers in
OpenAI's shapes (built with the `openai` package's own types)."""
