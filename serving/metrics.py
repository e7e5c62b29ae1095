"""The counters behind `/v2/models/{m}/stats` and `/metrics`, one set per loaded model version.

Counting is plain integer arithmetic on the event loop: no locks or label lookups per request.
Prometheus reads the same numbers at scrape time, so the two views always agree, and a version's
series go away when it is unloaded, as in Triton. Triton's metrics keep Triton's names, types and
labels (dashboards and the parity test compare them with Triton's); only requests the model took
count as failures, as Triton counts them. tritonflow's own per-version metrics carry the version's
release role too, and `tritonflow_version_role` gives it to Triton's by a join on model and version.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tritonflow.serving.batcher import Execution
from tritonflow.serving.errors import InferenceFailed, TooManyRequests

# Triton's `reason` label values, in the order it prints them.
FAILURE_REASONS = ("OTHER", "BACKEND", "CANCELED", "REJECTED")


def failure_reason(exc: BaseException) -> str:
    """Triton's reason for a failed request: the engine failed, the client left, or no room."""
    if isinstance(exc, InferenceFailed):
        return "BACKEND"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELED"
    if isinstance(exc, TooManyRequests):
        return "REJECTED"
    return "OTHER"


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
    inference_count: int = 0  # rows of the requests answered
    execution_count: int = 0  # engine calls
    last_inference_ms: int = 0
    pending: int = 0  # requests queued or executing now
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by rows per engine call

    def record_execution(self, ex: Execution) -> None:
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(ex.rows) or self.batches.setdefault(ex.rows, BatchStats())
        batch.compute_input.add(ex.input_ns - ex.started_ns)
        batch.compute_infer.add(ex.infer_ns - ex.input_ns)
        batch.compute_output.add(ex.ended_ns - ex.infer_ns)

    def record_success(self, started_ns: int, rows: int, ex: Execution) -> None:
        """One request answered, its rows counted with it (so a read never sees one without the other).

        Its phases cover its whole time in the node, from the data plane's entry (`started_ns`) to
        now: queue up to the engine call (checks, the loop's turn, the worker's queue), the call's
        input merge and engine time (a batch's, charged to each of its requests), and output: the
        split and the way back to the request on the loop.
        """
        now = perf_counter_ns()
        self.inference_count += rows
        self.success.add(now - started_ns)
        self.queue.add(ex.started_ns - started_ns)
        self.compute_input.add(ex.input_ns - ex.started_ns)
        self.compute_infer.add(ex.infer_ns - ex.input_ns)
        self.compute_output.add(now - ex.infer_ns)

    def record_failure(self, started_ns: int, exc: BaseException) -> None:
        """A request the model took and did not answer, by Triton's reason for it."""
        self.fail.add(perf_counter_ns() - started_ns)
        self.failures[failure_reason(exc)] += 1

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
            "response_stats": {},  # NOTE: per-response counts; Triton fills it for decoupled models only
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


# The disagreement histogram's upper bounds (le): 0 is exact agreement; for probabilities,
# 1e-6 is float32 noise between engines, 0.5 a flipped decision.
DISAGREEMENT_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class ShadowStats:
    """The counts of one (champion, shadow) pair; `buckets[i]`: the rows whose disagreement is
    <= DISAGREEMENT_BUCKETS[i] and above the bound before (the last one: above every bound)."""

    compared: int = 0  # requests run on both and compared
    dropped: int = 0  # copies not run: the queue was full, or the shadow stopped first
    failed: int = 0  # copies the shadow did not answer, or answered in another shape
    total: float = 0.0  # the sum of the rows' disagreements
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DISAGREEMENT_BUCKETS) + 1))

    def observe(self, per_row: np.ndarray) -> None:
        """One compared request: each row's disagreement."""
        self.compared += 1
        self.total += float(per_row.sum())
        slots = np.searchsorted(DISAGREEMENT_BUCKETS, per_row, side="left")
        counts = np.bincount(slots, minlength=len(self.buckets))
        self.buckets = [a + int(b) for a, b in zip(self.buckets, counts, strict=True)]


@dataclass(slots=True)
class CaptureStats:
    """The node's prediction capture (serving/capture.py), in rows and files since start-up."""

    rows: int = 0  # rows written to capture files
    dropped: int = 0  # rows not captured: the queue was full, or still unwritten at shutdown
    files: int = 0  # capture files written
    failures: int = 0  # writes that failed (their rows kept for the next try)


# Every Triton metric, declared once: its name, type and help as Triton 24.10 prints them, and how
# to read its samples, (extra labels, value), off a VersionStats.
Samples = Callable[[VersionStats], Iterable[tuple[dict[str, str], int]]]


def _one(read: Callable[[VersionStats], int]) -> Samples:
    return lambda s: [({}, read(s))]


TRITON: tuple[tuple[str, str, str, Samples], ...] = (
    (
        "nv_inference_request_success",
        "counter",
        "Number of successful inference requests, all batch sizes",
        _one(lambda s: s.success.count),
    ),
    (
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes",
        lambda s: [({"reason": reason}, s.failures[reason]) for reason in FAILURE_REASONS],
    ),
    (
        "nv_inference_count",
        "counter",
        "Number of inferences performed (does not include cached requests)",
        _one(lambda s: s.inference_count),
    ),
    (
        "nv_inference_exec_count",
        "counter",
        "Number of model executions performed (does not include cached requests)",
        _one(lambda s: s.execution_count),
    ),
    (
        "nv_inference_request_duration_us",
        "counter",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        _one(lambda s: (s.success.ns + s.fail.ns) // 1000),
    ),
    (
        "nv_inference_queue_duration_us",
        "counter",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        _one(lambda s: s.queue.ns // 1000),
    ),
    (
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        _one(lambda s: s.compute_input.ns // 1000),
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "counter",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        _one(lambda s: s.compute_infer.ns // 1000),
    ),
    (
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative inference compute output duration in microseconds (does not include cached requests)",
        _one(lambda s: s.compute_output.ns // 1000),
    ),
    (
        "nv_inference_pending_request_count",
        "gauge",
        "Instantaneous number of pending requests awaiting execution per-model.",
        _one(lambda s: s.pending),
    ),
)
BATCH_SIZE = ("tritonflow_inference_batch_size", "Rows per engine call (dynamic batching merges requests)")
BATCH_BUCKETS = tuple(2**i for i in range(14))  # 1 .. 8192 rows

REFUSALS = (
    "tritonflow_version_refusals",
    "Model versions (and configs) refused, by reason: incomplete, integrity, probe, load, store, config, "
    "steps",
)
ROLE = ("tritonflow_version_role", "1 for each version served, labelled with its release role")
DISAGREEMENT = (
    "tritonflow_shadow_disagreement",
    "Rows run on the champion and its shadow, by their largest absolute difference over the first output",
)
SHADOW_REQUESTS = (
    "tritonflow_shadow_requests",
    "Copies of champion requests for the shadow, by outcome: compared, dropped (queue full), failed",
)
SHADOW_LABELS = ["model", "champion_version", "shadow_version"]
CAPTURE = (  # NOTE: prometheus_client adds `_total` to each name
    ("tritonflow_capture_rows", "Rows of answered requests written to capture files", "rows"),
    ("tritonflow_capture_dropped", "Rows not captured: the capture queue was full (or shutdown)", "dropped"),
    ("tritonflow_capture_files", "Capture files written", "files"),
    ("tritonflow_capture_failures", "Capture file writes that failed (rows kept to try again)", "failures"),
)

Source = Callable[[], Iterable[tuple[str, int, str, VersionStats]]]  # (model, version, role, stats)
RefusalSource = Callable[[], Iterable[tuple[str, str, int]]]  # (model, reason, count)
ShadowSource = Callable[[], Iterable[tuple[str, int, int, ShadowStats]]]  # (model, champion, shadow, stats)
CaptureSource = Callable[[], CaptureStats | None]  # None: capture off


class StatsCollector(Collector):
    """Turns tritonflow's own metrics of every loaded version into Prometheus samples at scrape time."""

    def __init__(
        self, source: Source, refusals: RefusalSource, shadows: ShadowSource, captures: CaptureSource
    ) -> None:
        self._source = source
        self._refusals = refusals
        self._shadows = shadows
        self._captures = captures

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(*BATCH_SIZE, labels=["model", "version", "role"])
        roles = GaugeMetricFamily(*ROLE, labels=["model", "version", "role"])
        for name, version, role, stats in self._source():
            rows = sum(size * b.compute_infer.count for size, b in stats.batches.items())
            histogram.add_metric([name, str(version), role], _buckets(stats), rows)
            roles.add_metric([name, str(version), role], 1)
        yield histogram
        yield roles
        refused = CounterMetricFamily(*REFUSALS, labels=["model", "reason"])
        for name, reason, count in self._refusals():
            refused.add_metric([name, reason], count)
        yield refused
        disagreement = HistogramMetricFamily(*DISAGREEMENT, labels=SHADOW_LABELS)
        requests = CounterMetricFamily(*SHADOW_REQUESTS, labels=[*SHADOW_LABELS, "outcome"])
        for name, champion, shadow, counts in self._shadows():
            pair = [name, str(champion), str(shadow)]
            cumulative = np.cumsum(counts.buckets).tolist()
            bounds = [floatToGoString(le) for le in DISAGREEMENT_BUCKETS] + ["+Inf"]
            disagreement.add_metric(pair, list(zip(bounds, cumulative, strict=True)), counts.total)
            for outcome in ("compared", "dropped", "failed"):
                requests.add_metric([*pair, outcome], getattr(counts, outcome))
        yield disagreement
        yield requests
        captured = self._captures()
        if captured is not None:
            for name, doc, attribute in CAPTURE:
                yield CounterMetricFamily(name, doc, value=getattr(captured, attribute))


class Metrics:
    """`/metrics`: Triton's metrics as Triton prints them, then tritonflow's own."""

    def __init__(
        self,
        source: Source,
        refusals: RefusalSource,
        shadows: ShadowSource,
        captures: CaptureSource,
    ) -> None:
        self._source = source
        self._registry = CollectorRegistry()
        self._registry.register(StatsCollector(source, refusals, shadows, captures))

    def exposition(self) -> bytes:
        # NOTE: written here, not by prometheus_client: it appends `_total` to every counter's name,
        # which would break the dashboards and alerts written against Triton's names.
        versions = [
            ({"model": name, "version": str(version)}, stats) for name, version, _, stats in self._source()
        ]
        lines = []
        for metric, kind, doc, read in TRITON:
            lines += [f"# HELP {metric} {doc}", f"# TYPE {metric} {kind}"]
            for labels, stats in versions:
                lines += [f"{metric}{_labels(labels | extra)} {value}" for extra, value in read(stats)]
        return "\n".join(lines).encode() + b"\n" + generate_latest(self._registry)


# Prometheus' escapes in label values.
_ESCAPES = str.maketrans({"\\": r"\\", '"': r"\"", "\n": r"\n"})


def _labels(labels: dict[str, str]) -> str:
    """A sample's label set, names sorted as Triton prints them."""
    return "{" + ",".join(f'{k}="{v.translate(_ESCAPES)}"' for k, v in sorted(labels.items())) + "}"


def _buckets(stats: VersionStats) -> list[tuple[str, float]]:
    counts = {rows: b.compute_infer.count for rows, b in stats.batches.items()}
    cumulative = [
        (floatToGoString(le), sum(n for rows, n in counts.items() if rows <= le)) for le in BATCH_BUCKETS
    ]
    return [*cumulative, ("+Inf", sum(counts.values()))]
