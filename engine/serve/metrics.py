"""The server's Prometheus metrics (prometheus-client), in one registry of its own: requests by route and
status, latency per route, the seconds each stage of a batch took, how long work waited, items per batch,
and, read from the batchers at scrape time, items queued, items of the batch running and items dropped
(their caller went away)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .batcher import Batcher, OnBatch

_MS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITEMS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """What /metrics shows. `batcher(b)` adds a batcher's queue depth and drops, `on_batch(name)` is the
    callback a batcher calls after each batch, `request(route, status, seconds)` counts one answer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "duorank_requests", "answers by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "duorank_request_seconds", "request latency by route", ["route"], buckets=_MS, registry=r
        )
        self.items = Counter(
            "duorank_items", "texts embedded, pairs reranked, queries searched", ["stage"], registry=r
        )
        waited = "seconds a request's work waited for its batch"
        self.queue = Histogram("duorank_queue_seconds", waited, ["batcher"], buckets=_MS, registry=r)
        per_stage = "seconds per stage of one batch (tokenize, inference, embed, search, fetch, rerank)"
        self.stage = Histogram(
            "duorank_stage_seconds", per_stage, ["batcher", "stage"], buckets=_MS, registry=r
        )
        self.batch = Histogram(
            "duorank_batch_items", "items per batch", ["batcher"], buckets=_ITEMS, registry=r
        )
        self._batchers: list[Batcher] = []
        r.register(_Queues(self._batchers))

    def on_batch(self, name: str) -> OnBatch:
        def observe(items: int, stages: dict[str, float], waits: list[float]) -> None:
            self.batch.labels(name).observe(items)
            for seconds in waits:
                self.queue.labels(name).observe(seconds)
            for stage, seconds in stages.items():
                self.stage.labels(name, stage).observe(seconds)

        return observe

    def batcher(self, b: Batcher) -> None:
        self._batchers.append(b)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Queues(Collector):
    def __init__(self, batchers: list[Batcher]) -> None:
        self.batchers = batchers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        queued = GaugeMetricFamily("duorank_queue_items", "items waiting per batcher", labels=["batcher"])
        running = GaugeMetricFamily(
            "duorank_running_items", "items of the batch running now, per batcher", labels=["batcher"]
        )
        dropped = CounterMetricFamily(
            "duorank_dropped_items", "queued items dropped: their caller went away", labels=["batcher"]
        )
        for b in self.batchers:
            queued.add_metric([b.name], b.queued)
            running.add_metric([b.name], b.running)
            dropped.add_metric([b.name], b.dropped)
        yield queued
        yield running
        yield dropped
