"""Triton adapter for the decoupled llm stage: execute() enqueues and returns; the engine loop generates and
a sender thread streams (nanovl.serving.service). Control requests (stop, status): nanovl.serving.control."""
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.core.checkpoint import load_config, load_tokenizer
from nanovl.core.detokenize import TokenBytes
from nanovl.engine.factory import EngineSettings, build_engine
from nanovl.core.errors import NanoVLError
from nanovl.serving import control, tensors as T
from nanovl.serving.memory import set_mmap_threshold
from nanovl.serving.parameters import model_parameters, read_settings
from nanovl.engine.request import sampling_params
from nanovl.serving.service import GenerationService

_SCALARS = tuple(t.name for t in T.SAMPLING if t not in (T.STOP, T.STOP_TOKEN_IDS))
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


def _scalar(request, name):
    value = _input(request, name)
    return None if value is None else value.reshape(-1)[0].item()


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
        self.metrics = _EngineMetrics(self.service) if hasattr(pb_utils, "MetricFamily") else None

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
                prompt_ids = _input(request, T.INPUT_IDS.name).reshape(-1)
                table = _input(request, T.PROMPT_TABLE.name)   # [1, rows, hidden]
                table = None if table is None else table.reshape(-1, table.shape[-1])
                stop = _input(request, T.STOP.name)
                stop_ids = _input(request, T.STOP_TOKEN_IDS.name)
                sampling = sampling_params(
                    self.config, len(prompt_ids), **{name: _scalar(request, name) for name in _SCALARS},
                    stop=tuple(s.decode() for s in stop.reshape(-1)) if stop is not None else None,
                    stop_token_ids=tuple(stop_ids.reshape(-1).tolist()) if stop_ids is not None else None)
                self.service.submit(_Stream(sender), prompt_ids, sampling,
                                    table if table is not None and len(table) else None, request.request_id())
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
        logprobs = message.logprobs or []
        k = len(logprobs[0].top) if logprobs else 0
        outputs = {
            T.OUTPUT_IDS.name: message.output_ids,
            T.NEW_OFFSET.name: np.array([message.new_offset], np.int32),
            T.FINISH_REASON.name: np.array([message.finish_reason.encode()], np.object_),
            T.PROMPT_TOKENS.name: np.array([message.prompt_tokens], np.int32),
            T.COMPLETION_TOKENS.name: np.array([message.completion_tokens], np.int32),
            T.TRIM_BYTES.name: np.array([message.trim_bytes], np.int32),
            T.TOKEN_LOGPROBS.name: np.array([lp.logprob for lp in logprobs], np.float32),
            T.TOP_LOGPROB_IDS.name: np.array([[t for t, _ in lp.top] for lp in logprobs],
                                             np.int32).reshape(len(logprobs), k),
            T.TOP_LOGPROBS.name: np.array([[v for _, v in lp.top] for lp in logprobs],
                                          np.float32).reshape(len(logprobs), k),
        }
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


class _EngineMetrics:
    """Engine gauges on Triton's metrics port (refreshed twice a second), for autoscaling on queue depth and
    KV-cache use."""

    def __init__(self, service):
        self.service = service
        self.stop = threading.Event()
        gauge = pb_utils.MetricFamily.GAUGE
        # The families must outlive their metrics: keep both.
        self.families = [pb_utils.MetricFamily(name, doc, gauge) for name, doc in (
            ("nanovl_engine_running_sequences", "Sequences in the running batch"),
            ("nanovl_engine_waiting_sequences", "Sequences queued for a slot"),
            ("nanovl_engine_kv_cache_usage", "Fraction of KV-cache blocks in use"))]
        self.running, self.waiting, self.kv = (family.Metric() for family in self.families)
        threading.Thread(target=self._loop, name="llm-metrics", daemon=True).start()

    def _loop(self):
        while not self.stop.wait(0.5):
            self.update()

    def update(self):
        stats = self.service.engine.stats
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.kv.set(stats.kv_cache_usage)
