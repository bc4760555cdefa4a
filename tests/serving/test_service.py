"""GenerationService without Triton: a request its engine refuses at submit leaves no stream behind."""
import numpy as np
import pytest

from nanovl.core.errors import ClientError
from nanovl.engine.request import EngineStats, SamplingParams
from nanovl.serving.service import GenerationService


class RefusingEngine:
    """An Engine that refuses what it cannot honour at submit, as the tensorrt_llm engine does."""

    stats = EngineStats()

    def __init__(self, on_output):
        self.on_output, self.cancelled = on_output, []

    def submit(self, request):
        raise ClientError("top_logprobs > 0 is not available", param="top_logprobs")

    def cancel(self, request_id):
        self.cancelled.append(request_id)

    def shutdown(self):
        pass


def test_a_request_refused_at_submit_raises_and_leaves_no_stream(token_bytes):
    service = GenerationService(RefusingEngine, token_bytes, lambda target, message: None)
    try:
        with pytest.raises(ClientError, match="top_logprobs"):
            service.submit(object(), np.array([5, 6], np.int32), SamplingParams(logprobs=2), label="client-1")
        assert not service.knows("client-1") and service.cancel_request("client-1") == 0
    finally:
        service.close()
