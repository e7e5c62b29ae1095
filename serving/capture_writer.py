"""Prediction capture, the writer side: a thread that turns captured requests into Parquet files.

Every quarter second it takes the columns the request path filled (serving/capture_columns.py) and
turns them into Arrow tables, buffered per partition (model, version, hour of the answer; Arrow
tables are a few objects each, kept for a whole window without slowing the collector). It writes a
partition's rows as one file when they reach --capture-file-rows or have waited --capture-window-s
(and all of them when the capture closes), in lineage/capture_layout.py's keys and columns, through
the store layer (local: temp + rename; S3: one put). Arrow columns are built from whole buffers
(frombuffer, repeat, offsets), not row by row, so the GIL the loop needs is held briefly (py-spy at
64 connections: the writer held it in 0.3% of the samples). A write that fails (the store down) is
logged at most once a minute and counted; its rows stay buffered and are tried again a window later, still
counting against the queue's bound; at close they are tried once more, then dropped and counted.
pyarrow is imported here only, when capture is on.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tritonflow.lineage import capture_layout as layout
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.store import Store
from tritonflow.serving.capture import Capture, Throttled
from tritonflow.serving.capture_columns import Column, Partition, Pending
from tritonflow.serving.heap import settle_heap
from tritonflow.serving.model_version import Tensor

log = logging.getLogger("tritonflow.serving")

METADATA = "tritonflow.capture"  # the key of SCHEMA; the keys below start with it too
TICK_S = 0.25  # how often the writer turns the columns kept into tables


@dataclass
class _Buffer:
    """A partition's rows not yet written, as Arrow tables."""

    partition: Partition
    since: float  # monotonic: when its oldest row arrived, or its last write failed
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    failed: bool = False  # its last write failed: tried again a window later, however many rows


class Writer:
    """The writer thread of one Capture: `start`, then `close` once no request can arrive any more."""

    def __init__(self, capture: Capture, store: Store) -> None:
        self.capture = capture
        self.store = store
        self._buffers: dict[tuple[str, str], _Buffer] = {}  # by deployment id and hour
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tritonflow-capture", daemon=True)
        self._node = uuid.uuid4().hex[:8]  # NOTE: in file names, so nodes sharing a root never collide
        self._files = 0
        self._failed = Throttled()
        self._unfit = Throttled()

    def start(self) -> None:
        # NOTE: pyarrow imports pandas on its first table (~0.6 s holding the GIL): here, before serving,
        # not on the first tick under traffic, where it stalled every request (p99 x3 in the benchmark)
        parquet(pa.table({"warm": [0]}))
        settle_heap()  # NOTE: pandas' objects out of the collector's walks (serving/heap.py)
        self._thread.start()

    def close(self) -> None:
        """Write every row accepted so far, then stop (blocking: call it off the loop)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        settings = self.capture.settings
        tick = min(TICK_S, settings.window_s / 4)
        while True:
            closing = self._stop.wait(tick)
            self._gather()
            now = time.monotonic()
            for key, buffer in list(self._buffers.items()):
                full = buffer.rows >= settings.file_rows and not buffer.failed
                if closing or full or now - buffer.since >= settings.window_s:
                    self._flush(key, buffer)
            if closing:
                for key, buffer in self._buffers.items():
                    self.capture.dropped(buffer.rows)
                    log.error("capture: %d rows of %s dropped at shutdown (not written)", buffer.rows, key[0])
                return

    def _gather(self) -> None:
        """The requests kept since the last tick, into their partitions' buffers as tables."""
        now = time.monotonic()
        for pending in self.capture.take():
            rows = sum(pending.rows)
            try:
                tables = by_hour(pending)
            except (pa.ArrowException, ValueError) as exc:  # NOTE: never the thread's end: later rows count
                self.capture.dropped(rows)
                log.error(
                    "capture: %d rows of %s dropped, not convertible to Arrow: %s",
                    rows,
                    pending.partition.deployment_id,
                    exc,
                )
                continue
            if pending.unfit:
                self._unfit.warning(
                    "capture: %d tensors of %s left out (null in their rows): a tensor came in another "
                    "datatype than the requests just before (classified and raw outputs of one name), or "
                    "its values were not the same number for each of its rows",
                    pending.unfit,
                    pending.partition.deployment_id,
                )
            for hour, built in tables:
                key = (pending.partition.deployment_id, hour)
                buffer = self._buffers.get(key)
                if buffer is None:
                    buffer = self._buffers[key] = _Buffer(pending.partition, now)
                buffer.tables.append(built)
                buffer.rows += built.num_rows

    def _flush(self, key: tuple[str, str], buffer: _Buffer) -> None:
        """Write the buffer as files of at most --capture-file-rows rows; what fails stays buffered."""
        partition, hour = buffer.partition, key[1]
        captured = concat(buffer.tables)
        buffer.tables = []
        limit = self.capture.settings.file_rows
        for offset in range(0, captured.num_rows, limit):
            part = captured.slice(offset, limit)
            try:
                self.store.write(self._key(partition, hour), parquet(part))
            except (TritonflowError, OSError) as exc:
                self.capture.stats.failures += 1
                buffer.tables, buffer.rows = [captured.slice(offset)], captured.num_rows - offset
                buffer.since, buffer.failed = time.monotonic(), True
                self._say_failed(exc, buffer.rows)
                return
            self.capture.stats.files += 1
            self.capture.written(part.num_rows)
        del self._buffers[key]

    def _key(self, partition: Partition, hour: str) -> str:
        self._files += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{self._node}-{self._files:06d}{layout.SUFFIX}"
        return layout.CaptureKey(partition.model, partition.version, hour, name).key

    def _say_failed(self, exc: Exception, rows: int) -> None:
        self._failed.warning(
            "capture: cannot write to %s (%s); %d rows kept to try again "
            "(tritonflow_capture_failures_total counts the failed writes)",
            self.capture.settings.root,
            exc,
            rows,
        )


def by_hour(pending: Pending) -> list[tuple[str, pa.Table]]:
    """The pending requests' rows as tables, one per hour of their answers (one, unless the tick
    spans an hour's end)."""
    captured = table(pending)
    hours = np.frombuffer(pending.times, np.int64) // 3_600_000_000
    first, last = int(hours.min()), int(hours.max())
    if first == last:
        return [(_hour(first), captured)]
    rows = np.frombuffer(pending.rows, np.int64)
    return [
        (_hour(h), captured.filter(pa.array(np.repeat(hours == h, rows)))) for h in np.unique(hours).tolist()
    ]


def _hour(hours: int) -> str:
    """The hour partition of a count of hours since the epoch."""
    return layout.hour_of(datetime.fromtimestamp(hours * 3600, UTC))


def table(pending: Pending) -> pa.Table:
    """The rows of the pending requests (all of one partition), with that partition's metadata.

    NOTE: this runs holding the GIL the event loop needs (every tick's table stalled the loop for
    3 ms when built from a tuple per request: +3 ms on p99 at 64 connections): numbers reach Arrow
    from their arrays without a copy, and a request's fields reach its rows by one `take`, only when
    some request has several."""
    rows = np.frombuffer(pending.rows, np.int64)
    total = int(rows.sum())
    fields = {
        layout.REQUEST_ID: pa.array(pending.request_ids, pa.string()),
        layout.TIME: pa.array(np.frombuffer(pending.times, np.int64), pa.timestamp("us", tz="UTC")),
        layout.ROLE: pa.array(pending.roles, pa.string()),
        layout.LATENCY_US: pa.array(np.frombuffer(pending.latencies, np.int64)),
    }
    if total > len(rows):
        each = pa.array(np.repeat(np.arange(len(rows)), rows))
        fields = {name: array.take(each) for name, array in fields.items()}
    starts = np.cumsum(rows) - rows
    fields[layout.ROW] = pa.array((np.arange(total) - np.repeat(starts, rows)).astype(np.int32))
    fields[layout.DEPLOYMENT_ID] = pa.repeat(pa.scalar(pending.partition.deployment_id, pa.string()), total)
    columns = {name: fields[name] for name in layout.COLUMNS}
    for prefix, tensors in ((layout.INPUT, pending.inputs), (layout.OUTPUT, pending.outputs)):
        for name, column in tensors.items():
            columns[prefix + name] = _tensor_column(column, rows)
    return pa.table(columns).replace_schema_metadata(_metadata(pending.partition))


def parquet(captured: pa.Table) -> bytes:
    """A whole Parquet file (the store writes it aside and renames it, or puts it once)."""
    sink = pa.BufferOutputStream()
    # NOTE: dictionaries only where values repeat: tried on feature values, they cost 7x the write time
    pq.write_table(captured, sink, compression="zstd", use_dictionary=[layout.DEPLOYMENT_ID, layout.ROLE])
    return bytes(sink.getvalue().to_pybytes())


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Tables of one partition whose requests asked for different outputs: missing columns null."""
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def _tensor_column(column: Column, rows: np.ndarray) -> pa.Array:
    """A list column: each row's flattened values; null in the rows of requests that lack the tensor.
    BYTES tensors as Arrow strings: the codec admits only UTF-8 text, and a reader (drift, lookup,
    pandas) then gets str, not bytes."""
    values = column.values()
    entries, entry_widths = column.entries()
    widths = np.zeros(len(rows), np.int64)
    widths[entries] = entry_widths
    offsets = np.zeros(int(rows.sum()) + 1, np.int64)
    np.cumsum(np.repeat(widths, rows), out=offsets[1:])
    mask = None
    if len(entries) < len(rows):
        lacking = np.ones(len(rows), bool)
        lacking[entries] = False
        mask = pa.array(np.repeat(lacking, rows))
    flat = pa.array(values, pa.string()) if values.dtype == object else pa.array(values)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat, mask=mask)


@functools.cache
def _metadata(partition: Partition) -> dict[str, str]:
    tensors = {"inputs": _specs(partition.inputs), "outputs": _specs(partition.outputs)}
    return {
        METADATA: layout.SCHEMA,
        f"{METADATA}.model": partition.model,
        f"{METADATA}.version": str(partition.version),
        f"{METADATA}.deployment_id": partition.deployment_id,
        f"{METADATA}.tensors": json.dumps(tensors),  # each tensor's datatype and dims, as the config says
    }


def _specs(tensors: Sequence[Tensor]) -> list[dict[str, object]]:
    return [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in tensors]
