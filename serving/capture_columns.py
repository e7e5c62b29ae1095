"""Captured requests as columns, filled on the request path and handed to the writer whole.

Each answered request's values are copied here when it is answered (a few appends and one
bytes copy per tensor), so its arrays, dicts and body are freed at once, as without capture. Kept
until the writer's next tick instead, those objects were tens of thousands a second: they pushed
every request's allocations onto cold memory and the writer freed them in bursts holding the GIL,
which cost the node 5% of its throughput and a third more p99 at 64 connections, before any file
was written. The writer then builds Arrow columns from these buffers in a few calls, not one per
request (serving/capture_writer.py). No pyarrow here: the request side imports none.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from tritonflow.serving.model_version import Tensor

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class Partition:
    """What every row of one model version shares; its tensors as the config declares them."""

    model: str
    version: int
    deployment_id: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass
class Column:
    """One tensor's values over the requests that had it, flat and in arrival order."""

    dtype: np.dtype
    data: bytearray | list[object]  # numbers as bytes; BYTES tensors (object arrays) as their items
    entries: array[int] = field(default_factory=lambda: array("q"))  # which requests had it
    widths: array[int] = field(default_factory=lambda: array("q"))  # their values per row

    def add(self, entry: int, values: np.ndarray, rows: int) -> bool:
        """Append one request's values; False (nothing kept) when they do not fit the column: another
        datatype than the requests before (a classified output beside a raw one), or not `rows` rows."""
        width = values.size // rows if rows else 0
        if values.dtype != self.dtype or width * rows != values.size:
            return False
        if isinstance(self.data, list):
            self.data.extend(values.reshape(-1).tolist())
        else:
            self.data += values.tobytes()  # NOTE: one copy in C, in row-major order whatever the strides
        self.entries.append(entry)
        self.widths.append(width)
        return True

    def values(self) -> np.ndarray:
        """Every value kept, as one flat array (numbers without a copy)."""
        if isinstance(self.data, list):
            return np.array(self.data, dtype=object)
        return np.frombuffer(self.data, self.dtype)


def column_for(values: np.ndarray) -> Column:
    return Column(values.dtype, [] if values.dtype == object else bytearray())


@dataclass
class Pending:
    """One partition's requests answered since the writer last took them: a row of fields each, and
    the columns of their tensors."""

    partition: Partition
    roles: list[str] = field(default_factory=list)
    request_ids: list[str | None] = field(default_factory=list)
    times: array[int] = field(default_factory=lambda: array("q"))  # microseconds since the epoch
    latencies: array[int] = field(default_factory=lambda: array("q"))  # microseconds in the node
    rows: array[int] = field(default_factory=lambda: array("q"))  # each request's rows
    inputs: dict[str, Column] = field(default_factory=dict)
    outputs: dict[str, Column] = field(default_factory=dict)
    unfit: int = 0  # tensors left out (null in their rows): Column.add refused them

    def add(
        self,
        role: str,
        request_id: str | None,
        time_us: int,
        latency_us: int,
        rows: int,
        inputs: Tensors | None,
        outputs: Tensors,
    ) -> None:
        """One answered request; `inputs` None: --capture-inputs none."""
        entry = len(self.rows)
        self.roles.append(role)
        self.request_ids.append(request_id)
        self.times.append(time_us)
        self.latencies.append(latency_us)
        self.rows.append(rows)
        for tensors, columns in ((inputs, self.inputs), (outputs, self.outputs)):
            for name, values in (tensors or {}).items():
                column = columns.get(name)
                if column is None:
                    column = columns[name] = column_for(values)
                if not column.add(entry, values, rows):
                    self.unfit += 1
