"""Prediction capture, the writer side: a thread that turns captured requests into Parquet files.

Every quarter second it takes what the request path queued (serving/capture.py) and turns it into
Arrow tables, buffered per partition (model, version, hour of the answer; entries kept as Python
objects for a whole window slowed every garbage collection under load). It writes a partition's
rows as one file when they reach --capture-file-rows or have waited --capture-window-s (and all of
them when the capture closes), in lineage/capture_layout.py's keys and columns, through the store
layer (local: temp + rename; S3: one put). Columns are built per tensor from whole arrays
(concatenate, repeat, offsets), not row by row. A write that fails (the store down) is logged at
most once a minute and counted; its rows stay buffered and are tried again a window later, still
counting against the queue's bound; at close they are tried once more, then dropped and counted.
pyarrow is imported here only, when capture is on.
"""

from __future__ import annotations

import functools
import itertools
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
from tritonflow.serving.capture import Capture, Entry, Partition, Throttled
from tritonflow.serving.heap import settle_heap
from tritonflow.serving.model_version import Tensor

log = logging.getLogger("tritonflow.serving")

METADATA = "tritonflow.capture"  # the key of SCHEMA; the keys below start with it too
TICK_S = 0.25  # how often the writer turns queued entries into tables
CHUNK = 256  # entries made one table between two GIL switches (~1 ms; 64: a third less throughput)


@dataclass
class _Buffer:
    """A partition's rows not yet written, as Arrow tables (a few objects each, where the entries they
    were built from were several per request: kept for a whole window, those slowed every GC pass)."""

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
        """The entries queued since the last tick, into their partitions' buffers as tables, CHUNK
        entries at a time with the GIL let go in between: the loop then waits for one chunk at
        most, not for the whole tick's work (which tripled p99 at 64 connections)."""
        now = time.monotonic()
        new: dict[tuple[str, str], list[Entry]] = {}
        taken = self.capture.take()
        for start in range(0, len(taken), CHUNK):
            chunk = taken[start : start + CHUNK]
            for hour, entries in _by_hour(chunk):
                for entry in entries:
                    new.setdefault((entry.partition.deployment_id, hour), []).append(entry)
        for key, entries in new.items():
            for start in range(0, len(entries), CHUNK):
                self._buffer(key, entries[start : start + CHUNK], now)
                time.sleep(0)  # NOTE: a GIL switch: requests waiting on the loop go first

    def _buffer(self, key: tuple[str, str], entries: list[Entry], now: float) -> None:
        rows = sum(e.rows for e in entries)
        try:
            built = table(entries)
        except (pa.ArrowException, ValueError) as exc:  # NOTE: never the thread's end: later rows still count
            self.capture.dropped(rows)
            log.error("capture: %d rows of %s dropped, not convertible to Arrow: %s", rows, key[0], exc)
            return
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _Buffer(entries[0].partition, now)
        buffer.tables.append(built)
        buffer.rows += rows

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


def _by_hour(entries: list[Entry]) -> list[tuple[str, list[Entry]]]:
    """`entries` (in arrival order) by the hour of their answer: one datetime per chunk, not per
    entry, unless the chunk spans an hour's end."""
    first, last = (_hour(entries[i].time_us) for i in (0, -1))
    if first == last:
        return [(first, entries)]
    hours: dict[str, list[Entry]] = {}
    for entry in entries:
        hours.setdefault(_hour(entry.time_us), []).append(entry)
    return list(hours.items())


def _hour(time_us: int) -> str:
    return layout.hour_of(datetime.fromtimestamp(time_us / 1e6, UTC))


def table(entries: Sequence[Entry]) -> pa.Table:
    """The rows of `entries` (all of one partition), with that partition's metadata.

    NOTE: this runs holding the GIL the event loop needs, so each step is one pass in C where it can
    be: the entries' fields transposed by zip, and requests of one row each (the usual case) take
    no repeats."""
    partitions, roles, request_ids, times, latencies, counts, inputs, outputs = zip(*entries, strict=True)
    rows = np.array(counts, np.int64)
    total = int(rows.sum())
    repeat = _repeat if total > len(entries) else _as_is
    starts = np.cumsum(rows) - rows
    columns: dict[str, pa.Array] = {
        layout.REQUEST_ID: pa.array(repeat(request_ids, rows, object), pa.string()),
        layout.ROW: pa.array((np.arange(total) - np.repeat(starts, rows)).astype(np.int32)),
        layout.TIME: pa.array(repeat(times, rows), pa.timestamp("us", tz="UTC")),
        layout.DEPLOYMENT_ID: pa.array(np.full(total, partitions[0].deployment_id, object), pa.string()),
        layout.ROLE: pa.array(repeat(roles, rows, object), pa.string()),
        layout.LATENCY_US: pa.array(repeat(latencies, rows)),
    }
    for prefix, tensors in ((layout.INPUT, inputs), (layout.OUTPUT, outputs)):
        # NOTE: None (inputs not captured) and {} hold no names; chain walks the dicts' keys in C
        names = dict.fromkeys(itertools.chain.from_iterable(filter(None, tensors)))
        for name in names:
            columns[prefix + name] = _tensor_column([t.get(name) if t else None for t in tensors], rows)
    return pa.table(columns).replace_schema_metadata(_metadata(partitions[0]))


def parquet(captured: pa.Table) -> bytes:
    """A whole Parquet file (the store writes it aside and renames it, or puts it once)."""
    sink = pa.BufferOutputStream()
    # NOTE: dictionaries only where values repeat: tried on feature values, they cost 7x the write time
    pq.write_table(captured, sink, compression="zstd", use_dictionary=[layout.DEPLOYMENT_ID, layout.ROLE])
    return bytes(sink.getvalue().to_pybytes())


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Tables of one partition whose requests asked for different outputs: missing columns null."""
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def _repeat(values: Sequence[object], rows: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """A request's value for each of its rows."""
    return np.repeat(np.array(values, dtype=dtype), rows)


def _as_is(values: Sequence[object], rows: np.ndarray, dtype: type = np.int64) -> Sequence[object]:
    """`_repeat` where every request has one row: the values themselves."""
    return values


def _tensor_column(arrays: list[np.ndarray | None], rows: np.ndarray) -> pa.Array:
    """A list column: each row's flattened values; null for the requests that lack the tensor. BYTES
    tensors (object arrays of bytes) as Arrow strings: the codec admits only UTF-8 text, and a reader
    (drift, lookup, pandas) then gets str, not bytes."""
    total = int(rows.sum())
    uniform = _uniform(arrays, total)
    if uniform is not None:  # NOTE: every request has it, in one per-row shape: one concatenate
        values = uniform.reshape(-1)
        offsets = (np.arange(total + 1, dtype=np.int64) * (values.size // total)).astype(np.int32)
        mask = None
    else:
        present = np.array([a is not None for a in arrays])
        widths = np.array([a.size // n if a is not None else 0 for a, n in zip(arrays, rows, strict=True)])
        values = np.concatenate([a.reshape(-1) for a in arrays if a is not None])
        offsets = np.concatenate([[0], np.cumsum(np.repeat(widths, rows))]).astype(np.int32)
        mask = None if present.all() else pa.array(np.repeat(~present, rows))
    flat = pa.array(values, pa.string()) if values.dtype == object else pa.array(values)
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask)


def _uniform(arrays: list[np.ndarray | None], total: int) -> np.ndarray | None:
    """The arrays joined along their rows when all are present and agree on the rest of their shape
    (batch first: `total` rows in all, 2-D or more); None otherwise."""
    try:
        joined: np.ndarray = np.concatenate(arrays)  # type: ignore[arg-type]  # NOTE: None fails too
    except (ValueError, TypeError):
        return None
    return joined if joined.ndim >= 2 and joined.shape[0] == total > 0 else None


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
