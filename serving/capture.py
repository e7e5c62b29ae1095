"""Prediction capture, the request side: `tritonflow serve --capture ROOT` keeps what was asked and answered.

`offer`, called by the data plane once a request is answered, samples it (--capture-sample: whole
requests, all their rows or none), copies its fields and values into its partition's columns
(serving/capture_columns.py: a few appends, no pyarrow, no loop over rows) and returns, so the
request's own objects are freed as without capture. The queue is bounded in rows, counting every row
accepted and not yet written (waiting, buffered by the writer, or kept after a failed write): one more
request's rows are dropped and counted (tritonflow_capture_dropped_total), the request itself
answered as ever, and the log says so at most once a minute. serving/capture_writer.py's thread takes
the columns every tick and turns them into Parquet files under ROOT, as lineage/capture_layout.py
lays them out.

On SIGTERM the app closes the capture after the last request has been answered: every accepted row
is written. A kill -9 (or a crash) loses the rows not yet written, at most one --capture-window-s of
traffic (and never more than --capture-queue-rows); files appear whole, so none is left half-written
where a reader looks.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from time import perf_counter_ns

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.store import Store, open_store
from tritonflow.serving.batcher import Tensors
from tritonflow.serving.capture_columns import Partition, Pending
from tritonflow.serving.metrics import CaptureStats
from tritonflow.serving.model_version import ModelVersion

log = logging.getLogger("tritonflow.serving")

INPUTS = ("all", "none")
DEFAULT_FILE_ROWS = 100_000
DEFAULT_WINDOW_S = 60.0
# NOTE: a 1-row request of 30 FP32 features takes ~0.2 KiB in the columns, more once in Arrow tables
DEFAULT_QUEUE_ROWS = 250_000
LOG_EVERY_S = 60.0


class Throttled:
    """A warning said at most once per LOG_EVERY_S, so a full queue or a down store cannot flood the log."""

    def __init__(self) -> None:
        self._next = 0.0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + LOG_EVERY_S
            log.warning(message, *args)


class CaptureError(TritonflowError):
    """A capture root the node cannot write, or capture flags that do not fit together."""


@dataclass(frozen=True)
class CaptureSettings:
    root: str  # a local folder or s3://bucket/prefix
    sample: float = 1.0  # the share of requests captured, 0 < sample <= 1
    inputs: bool = True  # --capture-inputs all; False: outputs and stamps only
    file_rows: int = DEFAULT_FILE_ROWS  # rows per file at most
    window_s: float = DEFAULT_WINDOW_S  # a partition's rows are written at least this often
    queue_rows: int = DEFAULT_QUEUE_ROWS  # rows accepted and not yet written, at most


def check_root(root: str) -> Store:
    """The capture root's store, once a probe file has been written and removed there: a root the node
    cannot write is a one-line error at start-up, not a node that drops every row."""
    try:
        store = open_store(root)
    except ValueError as exc:
        raise CaptureError(f"--capture {root}: {exc}") from None
    probe = f".tritonflow-capture-probe-{uuid.uuid4().hex[:8]}"
    try:
        store.write(probe, b"")
        store.delete(probe)
    except TritonflowError as exc:
        raise CaptureError(
            f"--capture {root}: cannot write there ({exc}); give a folder or bucket this node can write"
        ) from None
    return store


class Capture:
    """The bounded hand-over between the request path (the loop, and shadow workers' threads) and the
    writer thread: each partition's columns, swapped for empty ones when the writer takes them."""

    def __init__(self, settings: CaptureSettings) -> None:
        self.settings = settings
        self.stats = CaptureStats()
        self._lock = threading.Lock()  # guards _pending, _held and stats.dropped: several threads change them
        self._pending: dict[str, Pending] = {}  # by deployment id
        self._held = 0  # rows accepted and not yet written or dropped
        self._partitions: dict[str, Partition] = {}  # by deployment id
        self._full = Throttled()

    def offer(
        self,
        target: ModelVersion,
        role: str,
        request_id: str | None,
        inputs: Tensors,
        rows: int,
        outputs: Tensors,
        started_ns: int,
    ) -> None:
        """Keep an answered request's rows, or drop (and count) them when the queue is full."""
        settings = self.settings
        if settings.sample < 1.0 and random.random() >= settings.sample:
            return
        latency_us = (perf_counter_ns() - started_ns) // 1000
        deployment_id = target.stamp["deployment_id"]
        with self._lock:
            full = self._held + rows > settings.queue_rows
            if full:
                self.stats.dropped += rows
            else:
                self._held += rows
                pending = self._pending.get(deployment_id)
                if pending is None:
                    pending = self._pending[deployment_id] = Pending(self._partition(target))
                time_us = time.time_ns() // 1000
                pending.add(
                    role, request_id, time_us, latency_us, rows, inputs if settings.inputs else None, outputs
                )
        if full:
            self._say_full()

    def take(self) -> list[Pending]:
        """Every partition's requests kept so far (the writer's side)."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return list(taken.values())

    def written(self, rows: int) -> None:
        """Accepted rows now in a file: room in the queue again."""
        with self._lock:
            self._held -= rows
        self.stats.rows += rows

    def dropped(self, rows: int) -> None:
        """Accepted rows that will not be written: a store still failing at shutdown, or values
        that Arrow cannot hold."""
        with self._lock:
            self._held -= rows
            self.stats.dropped += rows

    def _partition(self, target: ModelVersion) -> Partition:
        deployment_id = target.stamp["deployment_id"]
        found = self._partitions.get(deployment_id)
        if found is None:
            found = self._partitions[deployment_id] = Partition(
                target.name,
                target.version,
                deployment_id,
                tuple(target.inputs.values()),
                tuple(target.outputs.values()),
            )
        return found

    def _say_full(self) -> None:
        self._full.warning(
            "capture queue full (%d rows not yet written to %s): dropping new rows, %d so far "
            "(tritonflow_capture_dropped_total); raise --capture-queue-rows or check the store",
            self.settings.queue_rows,
            self.settings.root,
            self.stats.dropped,
        )
