"""The replica's Prometheus metrics (names and meaning: docs/serve.md, "Metrics")."""

from __future__ import annotations

from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Histogram buckets in seconds: TTFT spans queueing (seconds), TPOT one step (milliseconds).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 1.0)
WINDOW = 512  # values behind the p50/p95 gauges


class _Percentiles:
    """A histogram plus p50/p95 gauges over the last :data:`WINDOW` values."""

    def __init__(self, registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]):
        self.hist = Histogram(f"mbq_{name}_seconds", doc, buckets=buckets, registry=registry)
        self.p50 = Gauge(f"mbq_{name}_p50_seconds", f"{doc}: median of the last {WINDOW}", registry=registry)
        self.p95 = Gauge(f"mbq_{name}_p95_seconds", f"{doc}: p95 of the last {WINDOW}", registry=registry)
        self.recent: deque[float] = deque(maxlen=WINDOW)

    def observe(self, seconds: float) -> None:
        self.hist.observe(seconds)
        self.recent.append(seconds)
        p50, p95 = np.percentile(self.recent, [50, 95])
        self.p50.set(p50)
        self.p95.set(p95)


class ServeMetrics:
    """Counters and gauges of one replica, rendered by :meth:`render` as Prometheus text."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._requests = Counter("mbq_requests", "Requests by outcome", ["outcome"], registry=r)
        self._tokens = Counter("mbq_tokens", "Tokens by kind", ["kind"], registry=r)
        self.ttft = _Percentiles(r, "ttft", "Time to first token", TTFT_BUCKETS)
        self.tpot = _Percentiles(r, "tpot", "Time per output token", TPOT_BUCKETS)
        self.avg_bits = Gauge("mbq_avg_bits", "Average bits per routed call of the last step", registry=r)
        self.tau = Gauge("mbq_tau", "Router threshold τ of the last step", registry=r)
        self.queue_depth = Gauge("mbq_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("mbq_running_sequences", "Sequences decoding", registry=r)

    def refused(self, status: int) -> None:
        self._requests.labels(f"refused_{status}").inc()

    def completed(self) -> None:
        self._requests.labels("completed").inc()

    def cancelled(self) -> None:
        self._requests.labels("cancelled").inc()

    def bad_request(self) -> None:
        self._requests.labels("bad_request").inc()

    def tokens(self, kind: str, n: int) -> None:
        self._tokens.labels(kind).inc(n)

    def step(self, tau: float, avg_bits: float) -> None:
        self.tau.set(tau)
        self.avg_bits.set(avg_bits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
