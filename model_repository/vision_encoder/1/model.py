"""Triton adapter: the tiles of every request Triton's dynamic batcher hands over -> one encoder forward ->
one prompt table per request. Text-only requests (0 tiles) cost no forward."""
import ctypes
import ctypes.util

import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.core.checkpoint import load_config
from nanovl.core.vision_runtimes import VisionSettings, load_vision_engine
from nanovl.serving import tensors as T
from nanovl.serving.parameters import model_parameters, read_settings


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        self.encoder = load_vision_engine(self.config, read_settings(VisionSettings, params))
        libc = ctypes.util.find_library("c")
        self.malloc_trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None

    def execute(self, requests):
        # tiles: uint8 [1, n_i, S, S, 3] per request (ragged n_i, 0 for text-only)
        tiles = [pb_utils.get_input_tensor_by_name(r, T.TILES.name).as_numpy()[0] for r in requests]
        counts = [len(t) for t in tiles]
        hidden = self.config.llm_hidden_size
        if sum(counts):
            embeddings = self.encoder(np.concatenate([t for t in tiles if len(t)]))
            rows = embeddings.reshape(-1, hidden)   # [sum(n_i) * tokens_per_tile, hidden]
            del embeddings
        else:
            rows = np.zeros((0, hidden), np.float32)
        splits = np.cumsum([c * self.config.tokens_per_tile for c in counts])[:-1]
        responses = [pb_utils.InferenceResponse([pb_utils.Tensor(T.PROMPT_TABLE.name,
                                                            np.ascontiguousarray(part)[None])])
                     for part in np.split(rows, splits)]
        if sum(counts) and self.malloc_trim is not None:
            # Batches of every size leave glibc's heap fragmented: without handing freed memory back, the
            # stub grew ~100 MB per soak round (docs/reliability.md).
            self.malloc_trim(0)
        return responses
