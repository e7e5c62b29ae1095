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

from tritonflow.serving.batcher import Tensors
from tritonflow.serving.model_version import Tensor


@dataclass(frozen=True)
class Partition:
    """What every row of one model version shares; its tensors as the config declares them."""

    model: str
    version: int
    deployment_id: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


class Column:
    """One tensor's values over the requests that had it, flat and in arrival order."""

    __slots__ = ("dtype", "text", "data", "index")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.text = dtype.kind == "O"  # BYTES tensors: object arrays of bytes, kept as their items
        self.data: bytearray | list[object] = [] if self.text else bytearray()
        self.index: array[int] = array("q")  # (request, values per row) of each request that had it

    def add(self, entry: int, values: np.ndarray, rows: int) -> bool:
        """Append one request's values; False (nothing kept) when they do not fit the column: another
        datatype than the requests before (a classified output beside a raw one), or not `rows` rows."""
        size = values.size
        width = size // rows if rows else 0
        dtype = values.dtype
        if (dtype is not self.dtype and dtype != self.dtype) or width * rows != size:
            return False
        if self.text:
            self.data.extend(values.ravel().tolist())
        else:
            self.data += values.tobytes()  # type: ignore[operator]  # NOTE: one copy in C, row-major
        self.index.extend((entry, width))
        return True

    def values(self) -> np.ndarray:
        """Every value kept, as one flat array (numbers without a copy)."""
        if self.text:
            return np.array(self.data, dtype=object)
        return np.frombuffer(self.data, self.dtype)  # type: ignore[arg-type]

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """The requests that had this tensor, and their values per row."""
        pairs = np.frombuffer(self.index, np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]


def _numbers() -> array[int]:
    return array("q")


@dataclass
class Pending:
    """One partition's requests answered since the writer last took them: their own fields, one
    column each (numbers in arrays: the writer hands them to Arrow without a conversion per value),
    and the columns of their tensors."""

    partition: Partition
    roles: list[str] = field(default_factory=list)
    request_ids: list[str | None] = field(default_factory=list)
    times: array[int] = field(default_factory=_numbers)  # when answered, microseconds since the epoch
    latencies: array[int] = field(default_factory=_numbers)  # microseconds in the node
    rows: array[int] = field(default_factory=_numbers)  # each request's rows
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
        if inputs:
            self._add(self.inputs, entry, inputs, rows)
        self._add(self.outputs, entry, outputs, rows)

    def _add(self, columns: dict[str, Column], entry: int, tensors: Tensors, rows: int) -> None:
        for name, values in tensors.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = Column(values.dtype)
            if not column.add(entry, values, rows):
                self.unfit += 1
