"""A tiny Prometheus text-format registry: counters and histograms with labels."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class Counter:
    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self.values: dict[tuple, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(dict(k))} {v}" for k, v in sorted(self.values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * len(buckets)
        self.total, self.sum = 0, 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
            self.total += 1
            self.sum += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        lines += [f'{self.name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {self.total}',
                  f"{self.name}_sum {self.sum}", f"{self.name}_count {self.total}"]
        return lines


class ServerMetrics:
    def __init__(self):
        self.requests = Counter("m2kd_requests_total", "HTTP requests by route and status.")
        self.latency = Histogram("m2kd_request_latency_seconds", "Request latency.",
                                 LATENCY_BUCKETS)
        self.batch_size = Histogram("m2kd_batch_size", "Images per inference batch.",
                                    BATCH_BUCKETS)
        self.reloads = Counter("m2kd_model_reloads_total", "Model reloads by result.")

    def render(self) -> str:
        parts = [self.requests, self.latency, self.batch_size, self.reloads]
        return "\n".join(line for p in parts for line in p.render()) + "\n"
