"""The capture writer's table: every row of every request kept in the columns (one row a request,
several, a tensor some requests lack, text, one value a row, a tensor in another datatype), and one
table per hour when the requests span an hour's end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pytest

from tritonflow.lineage import capture_layout as layout
from tritonflow.serving.capture_columns import Partition, Pending
from tritonflow.serving.capture_writer import by_hour, table
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


HOUR_US = 3_600_000_000
START_US = 1_700_000_000_000_000 // HOUR_US * HOUR_US + HOUR_US - 100  # 100 us before an hour's end


class Entry(NamedTuple):
    """One request as the data plane answered it."""

    role: str
    request_id: str | None
    time_us: int
    latency_us: int
    rows: int
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def entry(i: int, rows: int, outputs: tuple[str, ...] = ("scores", "label")) -> Entry:
    rng = np.random.default_rng(i)
    made: dict[str, np.ndarray] = {
        "scores": rng.random((rows, 2), dtype=np.float32),
        "label": np.array([[f"class-{i}-{r}".encode()] for r in range(rows)], dtype=object),
        "rank": rng.random(rows, dtype=np.float32),  # one value a row: 1-D
    }
    inputs = {"features": rng.random((rows, 4), dtype=np.float32)}
    return Entry("champion", f"req-{i}" if i % 2 else None, START_US - 1000 + i, 10 + i, rows, inputs,
                 {name: made[name] for name in outputs})  # fmt: skip


def pending(entries: list[Entry]) -> Pending:
    kept = Pending(PARTITION)
    for e in entries:
        kept.add(e.role, e.request_id, e.time_us, e.latency_us, e.rows, e.inputs, e.outputs)
    return kept


CASES = {
    "one row each": [entry(i, 1) for i in range(300)],
    "several rows": [entry(i, 1 + i % 3) for i in range(50)],
    "a tensor some lack": [entry(i, 1, ("scores", "label") if i % 4 else ("scores",)) for i in range(40)],
    "one value a row": [entry(i, 1 + i % 2, ("rank",)) for i in range(20)],
}


def assert_rows(
    captured: list[dict[str, Any]], entries: list[Entry], unfit: frozenset[tuple[int, str]] = frozenset()
) -> None:
    """`captured` holds every row of `entries`, in order; the (entry, output) pairs in `unfit` null."""
    assert len(captured) == sum(e.rows for e in entries)
    rows = iter(captured)
    for i, e in enumerate(entries):
        for r in range(e.rows):
            got: dict[str, Any] = next(rows)
            assert (got[layout.REQUEST_ID], got[layout.ROW], got[layout.ROLE]) == (e.request_id, r, e.role)
            assert (got[layout.DEPLOYMENT_ID], got[layout.LATENCY_US]) == ("scorer-3-abc", e.latency_us)
            assert got[layout.TIME].timestamp() * 1e6 == pytest.approx(e.time_us, abs=1)
            np.testing.assert_array_equal(got[layout.INPUT + "features"], e.inputs["features"][r])
            for name in ("scores", "label", "rank"):
                column = got.get(layout.OUTPUT + name, "absent from every entry")
                if name not in e.outputs or (i, name) in unfit:
                    assert column in (None, "absent from every entry")
                elif e.outputs[name].dtype == object:
                    assert column == [e.outputs[name][r][0].decode()]
                else:
                    np.testing.assert_array_equal(column, np.atleast_1d(e.outputs[name][r]))


@pytest.mark.parametrize("case", CASES)
def test_every_row_of_every_request_is_in_the_table(case: str) -> None:
    entries = CASES[case]
    assert_rows(table(pending(entries)).to_pylist(), entries)


def test_a_tensor_in_another_datatype_is_null_and_counted() -> None:
    """A classified output (BYTES) after raw ones (FP32) of the same name: its rows keep everything
    else, that output null, and the writer is told (Pending.unfit) to say so."""
    entries = [entry(i, 1 + i % 2) for i in range(6)]
    classified = {"scores": np.array([[b"0.9:1"]] * entries[3].rows, dtype=object)}
    entries[3] = entries[3]._replace(outputs={**entries[3].outputs, **classified})
    kept = pending(entries)
    assert kept.unfit == 1
    assert_rows(table(kept).to_pylist(), entries, unfit=frozenset({(3, "scores")}))


def test_requests_spanning_an_hour_end_make_one_table_per_hour() -> None:
    entries = [entry(i, 1 + i % 3) for i in range(2000)]  # NOTE: 1 us apart, across START_US's hour end
    tables = by_hour(pending(entries))
    before = [e for e in entries if e.time_us < START_US + 100]
    after = [e for e in entries if e.time_us >= START_US + 100]
    assert [hour for hour, _ in tables] == [layout.hour_of(datetime.fromtimestamp(t / 1e6, UTC))
                                            for t in (before[0].time_us, after[0].time_us)]  # fmt: skip
    assert_rows(tables[0][1].to_pylist(), before)
    assert_rows(tables[1][1].to_pylist(), after)
