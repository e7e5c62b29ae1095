"""The counters behind `/v2/models/{m}/stats` and `/metrics`, one set per loaded model version.

Counting is plain integer arithmetic on the event loop: no locks or label lookups per request.
Prometheus reads the same numbers at scrape time through one collector, so the two views always
agree, and a version's series go away when it is unloaded, as in Triton.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tritonflow.serving.batcher import Execution


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    """Triton's statistics for one model version; durations in nanoseconds."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # engine calls
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by rows per engine call

    def record_execution(self, ex: Execution) -> None:
        self.execution_count += 1
        self.inference_count += ex.rows
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(ex.rows) or self.batches.setdefault(ex.rows, BatchStats())
        batch.compute_input.add(ex.input_ns - ex.started_ns)
        batch.compute_infer.add(ex.infer_ns - ex.input_ns)
        batch.compute_output.add(ex.ended_ns - ex.infer_ns)

    def record_success(self, started_ns: int, submitted_ns: int, ex: Execution) -> None:
        """One request answered; each request in a batch is charged the batch's compute time."""
        self.success.add(perf_counter_ns() - started_ns)
        self.queue.add(ex.started_ns - submitted_ns)
        self.compute_input.add(ex.input_ns - ex.started_ns)
        self.compute_infer.add(ex.infer_ns - ex.input_ns)
        self.compute_output.add(ex.ended_ns - ex.infer_ns)

    def record_failure(self, started_ns: int) -> None:
        self.fail.add(perf_counter_ns() - started_ns)

    def to_json(self, name: str, version: int) -> dict[str, Any]:
        """One entry of Triton's `model_stats` list."""
        zero = Duration().to_json()
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for rows, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


# Every metric, declared once: Triton's name, its help, how to read it off a VersionStats.
# NOTE: exposed as untyped so the sample names are exactly Triton's: prometheus_client's counter
# type would append `_total`, breaking dashboards and alerts written against Triton.
COUNTERS: tuple[tuple[str, str, Callable[[VersionStats], int]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests", lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests", lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (rows)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions (engine calls)", lambda s: s.execution_count),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
)
BATCH_SIZE = ("tritonflow_inference_batch_size", "Rows per engine call (dynamic batching merges requests)")
BATCH_BUCKETS = tuple(2**i for i in range(14))  # 1 .. 8192 rows

REFUSALS = (
    "tritonflow_version_refusals",
    "Model versions (and configs) refused, by reason: incomplete, integrity, probe, load, store, config",
)

Source = Callable[[], Iterable[tuple[str, int, VersionStats]]]
RefusalSource = Callable[[], Iterable[tuple[str, str, int]]]  # (model, reason, count)


class StatsCollector(Collector):
    """Turns the stats of every loaded version into Prometheus samples at scrape time."""

    def __init__(self, source: Source, refusals: RefusalSource) -> None:
        self._source = source
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        versions = [(name, str(version), stats) for name, version, stats in self._source()]
        for metric, doc, read in COUNTERS:
            family = Metric(metric, doc, "unknown")
            for name, version, stats in versions:
                family.add_sample(metric, {"model": name, "version": version}, read(stats))
            yield family
        histogram = HistogramMetricFamily(*BATCH_SIZE, labels=["model", "version"])
        for name, version, stats in versions:
            histogram.add_metric([name, version], _buckets(stats), stats.inference_count)
        yield histogram
        refused = CounterMetricFamily(*REFUSALS, labels=["model", "reason"])
        for name, reason, count in self._refusals():
            refused.add_metric([name, reason], count)
        yield refused


def _buckets(stats: VersionStats) -> list[tuple[str, float]]:
    counts = {rows: b.compute_infer.count for rows, b in stats.batches.items()}
    cumulative = [
        (floatToGoString(le), sum(n for rows, n in counts.items() if rows <= le)) for le in BATCH_BUCKETS
    ]
    return [*cumulative, ("+Inf", sum(counts.values()))]


def create_registry(source: Source, refusals: RefusalSource) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatsCollector(source, refusals))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
