"""The capture writer's table: every row of every entry, whichever path builds its columns (one row a
request, several, a tensor some requests lack, text, one value a row)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tritonflow.lineage import capture_layout as layout
from tritonflow.serving.capture import Entry, Partition
from tritonflow.serving.capture_writer import table
from tritonflow.serving.model_version import Tensor

F32, TEXT = np.dtype("float32"), np.dtype(object)
PARTITION = Partition(
    "scorer",
    3,
    "scorer-3-abc",
    (Tensor("features", "FP32", F32, (4,)),),
    (
        Tensor("scores", "FP32", F32, (2,)),
        Tensor("label", "BYTES", TEXT, (1,)),
        Tensor("rank", "FP32", F32, ()),
    ),
)


def entry(i: int, rows: int, outputs: tuple[str, ...] = ("scores", "label")) -> Entry:
    rng = np.random.default_rng(i)
    made: dict[str, np.ndarray] = {
        "scores": rng.random((rows, 2), dtype=np.float32),
        "label": np.array([[f"class-{i}-{r}".encode()] for r in range(rows)], dtype=object),
        "rank": rng.random(rows, dtype=np.float32),  # one value a row: 1-D
    }
    inputs = {"features": rng.random((rows, 4), dtype=np.float32)}
    return Entry(PARTITION, "champion", f"req-{i}" if i % 2 else None, 1_700_000_000_000_000 + i, 10 + i,
                 rows, inputs, {name: made[name] for name in outputs})  # fmt: skip


CASES = {
    "one row each": [entry(i, 1) for i in range(300)],
    "several rows": [entry(i, 1 + i % 3) for i in range(50)],
    "a tensor some lack": [entry(i, 1, ("scores", "label") if i % 4 else ("scores",)) for i in range(40)],
    "one value a row": [entry(i, 1 + i % 2, ("rank",)) for i in range(20)],
}


@pytest.mark.parametrize("case", CASES)
def test_every_row_of_every_entry_is_in_the_table(case: str) -> None:
    entries = CASES[case]
    captured = table(entries).to_pylist()
    assert len(captured) == sum(e.rows for e in entries)
    rows = iter(captured)
    for e in entries:
        for r in range(e.rows):
            got: dict[str, Any] = next(rows)
            assert (got[layout.REQUEST_ID], got[layout.ROW], got[layout.ROLE]) == (e.request_id, r, e.role)
            assert (got[layout.DEPLOYMENT_ID], got[layout.LATENCY_US]) == ("scorer-3-abc", e.latency_us)
            assert got[layout.TIME].timestamp() * 1e6 == pytest.approx(e.time_us, abs=1)
            np.testing.assert_array_equal(got[layout.INPUT + "features"], e.inputs["features"][r])
            for name in ("scores", "label", "rank"):
                column = got.get(layout.OUTPUT + name, "absent from every entry")
                if name not in e.outputs:
                    assert column in (None, "absent from every entry")
                elif name == "label":
                    assert column == [e.outputs[name][r][0].decode()]
                else:
                    np.testing.assert_array_equal(column, np.atleast_1d(e.outputs[name][r]))
