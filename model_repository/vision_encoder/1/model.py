"""Triton adapter: the tiles of every request Triton's dynamic batcher hands over -> one encoder forward ->
one prompt table per request. Text-only requests (0 tiles) cost no forward; images whose embeddings are cached
(nanovl.core.image_cache) cost none either."""
import ctypes
import ctypes.util

import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.core.checkpoint import load_config
from nanovl.core.image_cache import EmbeddingCache, encode_batch
from nanovl.core.vision_runtimes import VisionSettings, load_vision_engine
from nanovl.serving import tensors as T
from nanovl.serving.image_io import vision_request
from nanovl.serving.stage_metrics import MetricsPoller
from nanovl.serving.parameters import model_parameters, read_settings

_METRICS = (
    ("nanovl_image_embedding_cache_queries_total", "Images looked up in the embedding cache", "counter", "queries"),
    ("nanovl_image_embedding_cache_hits_total", "Images whose embeddings the cache held", "counter", "hits"),
    ("nanovl_image_embedding_cache_bytes", "Bytes of embeddings the cache holds", "gauge", "bytes"),
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        settings = read_settings(VisionSettings, params)
        self.encoder = load_vision_engine(self.config, settings)
        size = settings.image_embedding_cache_bytes
        self.cache = EmbeddingCache(size) if size > 0 else None
        self.metrics = (MetricsPoller(pb_utils.MetricFamily, lambda: self.cache, _METRICS)
                        if self.cache is not None and hasattr(pb_utils, "MetricFamily") else None)
        libc = ctypes.util.find_library("c")
        self.malloc_trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None

    def execute(self, requests):
        # tiles: uint8 [1, n_i, S, S, 3] per request (ragged n_i, 0 for text-only and for cached images)
        batch = [vision_request(lambda name, r=r: _input(r, name)) for r in requests]
        tables = encode_batch(self.encoder, batch, self.cache, self.config.llm_hidden_size,
                              self.config.tokens_per_tile)
        responses = [pb_utils.InferenceResponse([pb_utils.Tensor(T.PROMPT_TABLE.name,
                                                                 np.ascontiguousarray(table, np.float32)[None])])
                     for table in tables]
        if any(len(t) for t in tables) and self.malloc_trim is not None:
            # Batches of every size leave glibc's heap fragmented: without handing freed memory back, the
            # stub grew ~100 MB per soak round (docs/reliability.md).
            self.malloc_trim(0)
        return responses

    def finalize(self):
        if self.metrics:
            self.metrics.stop.set()


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
