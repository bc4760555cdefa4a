"""The one object that owns torch in the reference engine: the Llama forward with a KV cache per sequence."""
from __future__ import annotations

import torch

from ..checkpoint import CheckpointConfig, load_llm
from .request import GenerationRequest


class ModelRunner:
    def __init__(self, config: CheckpointConfig, *, dtype: str | None = None, device: str = "cpu"):
        self.config = config
        self.device = device
        self.model = load_llm(config, dtype=dtype, device=device)
        self.embed = self.model.get_input_embeddings()
        self._caches: dict[int, object] = {}

    def prompt_embeddings(self, request: GenerationRequest) -> torch.Tensor:
        """-> float [1, prompt_len, hidden]: token embeddings, image rows taken from the prompt table."""
        ids = torch.as_tensor(request.prompt_ids, dtype=torch.long, device=self.device)
        vocab = self.config.vocab_size
        is_image = ids >= vocab
        embeds = self.embed(ids.clamp(max=vocab - 1))
        if bool(is_image.any()):
            table = torch.as_tensor(request.prompt_table, device=self.device, dtype=embeds.dtype)
            rows = ids[is_image] - vocab
            if request.prompt_table is None or int(rows.max()) >= len(table):
                raise ValueError("prompt ids reference image rows the prompt table does not have")
            embeds[is_image] = table[rows]
        return embeds[None]

    @torch.inference_mode()
    def prefill(self, key: int, request: GenerationRequest) -> torch.Tensor:
        """Runs the prompt, keeps its KV cache under `key`. -> logits float [vocab] of the last position."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        out = self.model(inputs_embeds=self.prompt_embeddings(request), cache=cache, use_cache=True,
                         logits_to_keep=1)
        self._caches[key] = cache   # filled in place
        return out.logits[0, -1].float()

    @torch.inference_mode()
    def decode(self, key: int, token_id: int) -> torch.Tensor:
        """One new token for the sequence under `key`. -> logits float [vocab]."""
        ids = torch.tensor([[token_id]], device=self.device)
        out = self.model(input_ids=ids, cache=self._caches[key], use_cache=True)
        return out.logits[0, -1].float()

    def release(self, key: int) -> None:
        self._caches.pop(key, None)
