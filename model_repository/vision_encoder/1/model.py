"""Triton adapter: tiles of every request in one execute() -> one encoder batch -> per-request tables."""
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from nanovl.checkpoint import load_config
from nanovl.settings import model_parameters
from nanovl.vision import load_vision


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        self.encoder = load_vision(self.config, dtype=params["dtype"] or None, device=params["device"])
        torch.set_num_threads(max(1, torch.get_num_threads()))

    def execute(self, requests):
        # tiles: uint8 [n_i, S, S, 3] per request; text-only requests have n_i = 0 and cost nothing.
        tiles = [pb_utils.get_input_tensor_by_name(r, "tiles").as_numpy() for r in requests]
        counts = [len(t) for t in tiles]
        hidden = self.config.llm_hidden_size
        if sum(counts):
            batch = torch.from_numpy(np.concatenate([t for t in tiles if len(t)]))
            embeddings = self.encoder(batch.to(self.encoder.mlp1[1].weight.device)).float().cpu()
            rows = embeddings.reshape(-1, hidden).numpy()   # [sum(n_i) * tokens_per_tile, hidden]
        else:
            rows = np.zeros((0, hidden), np.float32)
        per_tile = self.config.tokens_per_tile
        splits = np.cumsum([c * per_tile for c in counts])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("prompt_embedding_table", np.ascontiguousarray(part))])
                for part in np.split(rows, splits)]
