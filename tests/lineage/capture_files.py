"""Capture files as the node writes them (lineage/capture_layout.py), for the readers' tests.

The writer's own tests (tests/serving/test_capture.py) check that the node writes exactly this.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.store import open_store


def capture_bytes(
    inputs: np.ndarray | None,
    outputs: np.ndarray,
    request_ids: list[str | None],
    deployment_id: str,
    when: datetime,
    role: str = "champion",
    schema: str = cl.SCHEMA,
) -> bytes:
    """One Parquet capture file: a row per input row, request ids given per row."""
    n = len(outputs)
    columns = {
        cl.REQUEST_ID: pa.array(request_ids, pa.string()),
        cl.ROW: pa.array(_rows_in_request(request_ids), pa.int32()),
        cl.TIME: pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        cl.DEPLOYMENT_ID: pa.array([deployment_id] * n, pa.string()),
        cl.ROLE: pa.array([role] * n, pa.string()),
        cl.LATENCY_US: pa.array([250] * n, pa.int64()),
    }
    if inputs is not None:
        columns[cl.INPUT + "input__0"] = pa.array(
            list(np.asarray(inputs, np.float32)), pa.list_(pa.float32())
        )
    columns[cl.OUTPUT + "output__0"] = pa.array(
        list(np.asarray(outputs, np.float32).reshape(n, -1)), pa.list_(pa.float32())
    )
    table = pa.table(columns).replace_schema_metadata({"tritonflow.capture": schema})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_capture(root: str, model: str, version: int, name: str, data: bytes, when: datetime) -> str:
    """Put a capture file where the node would: `<model>/<version>/<hour>/<name>` under `root`."""
    key = f"{model}/{version}/{cl.hour_of(when)}/{name}"
    open_store(root).write(key, data)
    return key


def now() -> datetime:
    return datetime.now(UTC)


def _rows_in_request(request_ids: list[str | None]) -> list[int]:
    seen: dict[str | None, int] = {}
    rows = []
    for rid in request_ids:
        rows.append(seen.get(rid, 0))
        seen[rid] = rows[-1] + 1
    return rows
