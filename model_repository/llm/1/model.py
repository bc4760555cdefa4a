"""Triton adapter for the decoupled llm stage: execute() enqueues and returns; the engine loop generates and
a sender thread streams. The logic is nanovl.engine (GenerationService)."""
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from nanovl.checkpoint import load_config, load_tokenizer
from nanovl.detokenize import TokenBytes
from nanovl.engine.factory import EngineSettings, build_engine
from nanovl.engine.service import GenerationService, sampling_params
from nanovl.errors import NanoVLError
from nanovl.settings import model_parameters

_SCALARS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "min_tokens", "repetition_penalty",
            "frequency_penalty", "presence_penalty", "logprobs")
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
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
        params = model_parameters(args)
        self.config = load_config(params["checkpoint_dir"])
        settings = EngineSettings.from_parameters(params)
        self.service = GenerationService(lambda on_output: build_engine(settings, self.config, on_output),
                                         TokenBytes.from_tokenizer(load_tokenizer(self.config)), self._send,
                                         stream_interval_s=settings.stream_interval_ms / 1000)
        self.metrics = _EngineMetrics(self.service) if hasattr(pb_utils, "MetricFamily") else None

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                stop_request = _input(request, "stop_request")
                if stop_request is not None:
                    self.service.cancel_request(stop_request.reshape(-1)[0].decode())
                    sender.send(flags=_FINAL)
                    continue
                status_request = _input(request, "status_request")
                if status_request is not None:
                    status = {"known": self.service.knows(status_request.reshape(-1)[0].decode()),
                              "started_at": self.started_at}
                    reply = pb_utils.Tensor("finish_reason", np.array([json.dumps(status).encode()], np.object_))
                    sender.send(pb_utils.InferenceResponse([reply]), flags=_FINAL)
                    continue
                prompt_ids = _input(request, "input_ids").reshape(-1)
                table = _input(request, "prompt_embedding_table")   # [1, rows, hidden]
                table = None if table is None else table.reshape(-1, table.shape[-1])
                stop = _input(request, "stop")
                stop_ids = _input(request, "stop_token_ids")
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
            "output_ids": message.output_ids,
            "new_token_offset": np.array([message.new_offset], np.int32),
            "finish_reason": np.array([message.finish_reason.encode()], np.object_),
            "prompt_tokens": np.array([message.prompt_tokens], np.int32),
            "completion_tokens": np.array([message.completion_tokens], np.int32),
            "trim_bytes": np.array([message.trim_bytes], np.int32),
            "token_logprobs": np.array([lp.logprob for lp in logprobs], np.float32),
            "top_logprob_ids": np.array([[t for t, _ in lp.top] for lp in logprobs], np.int32).reshape(len(logprobs), k),
            "top_logprob_values": np.array([[v for _, v in lp.top] for lp in logprobs],
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
