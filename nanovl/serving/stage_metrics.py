"""Stage metrics on Triton's metrics port: a poller copies a stats object's fields into metric families."""
from __future__ import annotations

import threading
from typing import Callable

# (name, help, kind, EngineStats field): gauges are set, counters advance by what the stats grew.
ENGINE_METRICS = (
    ("nanovl_engine_running_sequences", "Sequences in the running batch", "gauge", "running"),
    ("nanovl_engine_waiting_sequences", "Sequences queued for a slot", "gauge", "waiting"),
    ("nanovl_engine_kv_cache_usage", "Fraction of KV-cache blocks in use", "gauge", "kv_cache_usage"),
    ("nanovl_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache (vLLM's "
     "prefix_cache_queries)", "counter", "prefix_cache_queries"),
    ("nanovl_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (vLLM's prefix_cache_hits)",
     "counter", "prefix_cache_hits"),
    ("nanovl_prefix_cache_bytes", "KV bytes of cached blocks no sequence holds (kept for hits)", "gauge",
     "prefix_cache_bytes"),
)


class MetricsPoller:
    """Copies `read()`'s stats into metric families twice a second. metric_family: pb_utils.MetricFamily (given,
    so this module stays Triton-free); table: rows of (name, help, "gauge" | "counter", stats field)."""

    def __init__(self, metric_family, read: Callable[[], object], table=ENGINE_METRICS, every_s: float = 0.5):
        self.read = read
        self.table = table
        self.every_s = every_s
        self.stop = threading.Event()
        kinds = {"gauge": metric_family.GAUGE, "counter": metric_family.COUNTER}
        # The families must outlive their metrics: keep both.
        self.families = [metric_family(name, doc, kinds[kind]) for name, doc, kind, _ in table]
        self.metrics = [family.Metric() for family in self.families]
        self.reported = [0] * len(table)
        threading.Thread(target=self._loop, name="stage-metrics", daemon=True).start()

    def _loop(self):
        while not self.stop.wait(self.every_s):
            self.update()

    def update(self):
        stats = self.read()
        for i, (metric, (_, _, kind, field)) in enumerate(zip(self.metrics, self.table)):
            value = getattr(stats, field)
            if kind == "gauge":
                metric.set(value)
            elif value > self.reported[i]:
                metric.increment(value - self.reported[i])
                self.reported[i] = value
