"""Triton adapter for the decoupled llm stage: execute() enqueues and returns; the engine loop generates and
a sender thread streams (nanovl.serving.service). Control requests (stop, status): nanovl.serving.control."""
import time

import triton_python_backend_utils as pb_utils

from nanovl.core.checkpoint import load_config, load_tokenizer
from nanovl.core.detokenize import TokenBytes
from nanovl.engine.factory import EngineSettings, build_engine
from nanovl.core.errors import NanoVLError
from nanovl.serving import control, tensors as T
from nanovl.serving.llm_io import message_outputs, read_request
from nanovl.serving.stage_metrics import MetricsPoller
from nanovl.serving.memory import set_mmap_threshold
from nanovl.serving.parameters import model_parameters, read_settings
from nanovl.serving.service import GenerationService

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Every engine step allocates logits of [rows, vocab] floats: 16 MB at 32 rows of the 128k vocabulary. Under the
# launcher's 1 MB mmap threshold each was mmapped, faulted in and unmapped every step (the engine in-process at 16
# clients: 1172 tok/s, with that threshold 809; docs/perf.md); they are the same sizes step after step, so the
# heap reuses them.
_MMAP_THRESHOLD = 64 << 20
# is_cancelled() is an IPC to the server: ask every Nth response of a stream, not every one.
_CANCEL_POLL_EVERY = 8


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        # A client whose stream went silent compares this with its own start: a stage loaded after the
        # request began (the supervisor reloaded a dead stub) has lost it.
        self.started_at = time.time()
        set_mmap_threshold(_MMAP_THRESHOLD)
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        settings = read_settings(EngineSettings, params)
        self.service = GenerationService(lambda on_output: build_engine(settings, self.config, on_output),
                                         TokenBytes.from_tokenizer(load_tokenizer(self.config)), self._send,
                                         stream_interval_s=settings.stream_interval_ms / 1000)
        self.metrics = (MetricsPoller(pb_utils.MetricFamily, lambda: self.service.engine.stats)
                        if hasattr(pb_utils, "MetricFamily") else None)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                stop_request = _input(request, T.STOP_REQUEST.name)
                if stop_request is not None:
                    self.service.cancel_request(stop_request.reshape(-1)[0].decode())
                    sender.send(flags=_FINAL)
                    continue
                status_request = _input(request, T.STATUS_REQUEST.name)
                if status_request is not None:
                    status = control.RequestStatus(self.service.knows(status_request.reshape(-1)[0].decode()),
                                                   self.started_at)
                    reply = [pb_utils.Tensor(k, v) for k, v in control.status_outputs(status).items()]
                    sender.send(pb_utils.InferenceResponse(reply), flags=_FINAL)
                    continue
                inputs = read_request(lambda name: _input(request, name), self.config)
                self.service.submit(_Stream(sender), inputs.prompt_ids, inputs.sampling, inputs.prompt_table,
                                    request.request_id(), prompt_extra_ids=inputs.prompt_extra_ids,
                                    cache_salt=inputs.cache_salt)
            except NanoVLError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.to_wire())), flags=_FINAL)
        return None

    def _send(self, stream, message):
        if message.error is not None:
            stream.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message.error)), flags=_FINAL)
            return
        stream.sends += 1
        if not message.final and stream.sends % _CANCEL_POLL_EVERY == 0 and stream.sender.is_cancelled():
            self.service.cancel_stream(stream)   # works where the server delivers the cancel (direct streams)
        outputs = message_outputs(message)
        response = pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in outputs.items()])
        stream.sender.send(response, flags=_FINAL if message.final else 0)

    def finalize(self):
        if self.metrics:
            self.metrics.stop.set()
        self.service.close()


class _Stream:
    __slots__ = ("sender", "sends")

    def __init__(self, sender):
        self.sender = sender
        self.sends = 0
