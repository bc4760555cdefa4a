"""Prometheus metrics of the OpenAI endpoint (GET /v1/metrics). Triton's own are on its metrics port."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

from .admission import Admission

# Seconds; from a few ms (tiny checkpoint on CPU, an 8B model's decode step on a GPU) to long generations.
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5)


class Metrics:
    """One registry per app, so that several apps in one process (tests) do not collide."""

    def __init__(self, admission: Admission):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nanovl_requests", "HTTP requests by route and status", ["endpoint", "status"],
                                registry=r)
        self.ttft = Histogram("nanovl_time_to_first_token_seconds", "request start to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("nanovl_inter_token_latency_seconds", "time between tokens of one stream, per token",
                             buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("nanovl_e2e_request_latency_seconds", "request start to its last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("nanovl_prompt_tokens", "prompt tokens, image tokens included", registry=r)
        self.generation_tokens = Counter("nanovl_generation_tokens", "generated tokens", registry=r)
        Gauge("nanovl_requests_running", "generations in flight to Triton", registry=r).set_function(
            lambda: admission.running)
        Gauge("nanovl_requests_waiting", "requests waiting for a generation slot", registry=r).set_function(
            lambda: admission.waiting)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
