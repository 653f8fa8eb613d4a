"""The server's Prometheus metrics, through `prometheus_client`.

Each `ServerMetrics` owns its registry (several servers in one process, as the tests
run them, do not collide). With several server processes behind one port, set
`PROMETHEUS_MULTIPROC_DIR` to an empty folder before start: `render` then merges
every process's values (prometheus_client's multiprocess mode; counters and
histograms only, which is all we export).
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("m2kd_requests_total", "HTTP requests by route and status.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("m2kd_request_latency_seconds", "Request latency.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("m2kd_batch_size", "Images per inference batch.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.reloads = Counter("m2kd_model_reloads_total", "Model reloads by result.",
                               ["result"], registry=self.registry)

    def render(self) -> str:
        """The text exposition format (merged across processes in multiprocess mode)."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry).decode()
