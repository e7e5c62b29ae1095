"""The drift check's reading side for tabular ensembles: per-column (v2) profiles with categorical
columns, PSI over their values, "other" and missing, and reference files of the first schema (v1, as
@deploy wrote them before ensembles had one) read and checked as before."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tritonflow.lineage import capture_layout as cl
from tritonflow.lineage.drift import EPSILON, MISSING, OTHER, Thresholds, category_drift, drift_document
from tritonflow.lineage.records import sha256_hex
from tritonflow.lineage.reference import NoReference, read_reference, reference_key
from tritonflow.lineage.store import open_store

# A profile as tritonflow wrote them before schema v2: no `kind`, no `layout` (one-tensor models).
V1 = {
    "schema": "tritonflow.reference/v1",
    "created_at": "2026-11-30T10:00:00Z",
    "source": {"kind": "sample", "artifacts": [{"name": "X", "sha": None, "rows": 4}], "rows": 4},
    "rows": 4,
    "profiled_rows": 4,
    "levels": [0.0, 0.5, 1.0],
    "features": [
        {
            "name": "f0",
            "edges": [0.0],
            "shares": [0.5, 0.5],
            "missing": 0.0,
            "min": -1.0,
            "max": 1.0,
            "mean": 0.0,
            "quantiles": [-1.0, 0.0, 1.0],
        }
    ],
    "prediction": None,
}
CATEGORY = {
    "name": "city",
    "kind": "categorical",
    "values": ["Paris", "Rome"],
    "shares": [0.75, 0.25],
    "other": 0.0,
    "distinct": 2,
    "missing": 0.2,
}
SIGNATURE = {"inputs": [{"name": "input__0"}], "outputs": [{"name": "output__0"}]}


def _listed(tmp_path: Path, make_record, profile: dict) -> tuple[object, object]:
    """A store holding `profile` as version 1's reference.json, and a record listing its sha256."""
    store = open_store(str(tmp_path / "repo"))
    data = json.dumps(profile).encode()
    store.write(reference_key("m", 1), data)
    record = dataclasses.replace(
        make_record("m", 1), reference={"path": "1/reference.json", "sha256": sha256_hex(data)}
    )
    return store, record


def _lists(values: list, datatype: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array([[v] for v in values], pa.list_(datatype))])


def test_a_reference_of_the_first_schema_still_reads_and_checks(tmp_path, make_record) -> None:
    store, record = _listed(tmp_path, make_record, V1)
    profile = read_reference(store, record)
    table = pa.table(
        {
            cl.INPUT + "input__0": pa.array([[v] for v in [-0.5, 0.5, 0.7, 2.0]], pa.list_(pa.float32())),
            cl.OUTPUT + "output__0": pa.array([[0.1]] * 4, pa.list_(pa.float32())),
        }
    )
    doc = drift_document(record.deployment_id, profile, SIGNATURE, table, Thresholds())
    (f0,) = doc["features"]
    assert (f0["name"], f0["kind"], f0["drift"], doc["notes"]) == ("f0", "numeric", True, [])
    assert f0["bins"]["current"] == [0.25, 0.75, 0.0]

    store, record = _listed(tmp_path / "v9", make_record, {**V1, "schema": "tritonflow.reference/v9"})
    with pytest.raises(NoReference, match="reference/v1.*reference/v2"):
        read_reference(store, record)


def test_a_category_column_is_psi_over_its_values_other_and_missing() -> None:
    # 10 rows: Paris 5, Rome 2, an unseen value 1, missing 2 ("" as clients send it, and a null)
    values = pa.array(["Paris"] * 5 + ["Rome"] * 2 + ["Oslo", "", None])
    item = category_drift(CATEGORY, values, Thresholds())
    expected, actual = np.array([0.6, 0.2, 0.0, 0.2]), np.array([0.5, 0.2, 0.1, 0.2])
    e, a = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
    assert item["psi"] == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert item["bins"] == {
        "labels": ["Paris", "Rome", OTHER, MISSING],
        "reference": pytest.approx(expected.tolist()),
        "current": pytest.approx(actual.tolist()),
    }
    assert (item["ks"], item["drift"], item["missing"]["current"]) == (None, True, pytest.approx(0.2))
    assert item["top"] == {"value": "Paris", "reference": pytest.approx(0.6), "current": pytest.approx(0.5)}

    like = pa.array(["Paris"] * 6 + ["Rome"] * 2 + ["", ""])
    assert category_drift(CATEGORY, like, Thresholds())["drift"] is False


def test_an_ensemble_document_reads_each_column_by_name() -> None:
    numeric = {**V1["features"][0], "name": "amount", "kind": "numeric"}
    features = [CATEGORY, numeric]
    profile = {**V1, "schema": "tritonflow.reference/v2", "layout": "columns", "features": features}
    signature = {"inputs": [{"name": "city"}, {"name": "amount"}], "outputs": [{"name": "output__0"}]}
    rows = 8
    table = pa.table(
        {
            # NOTE: binary, as a node wrote BYTES columns before they were strings
            cl.INPUT + "city": _lists([b"Paris"] * 6 + [b"Rome", b""], pa.binary()),
            cl.INPUT + "amount": _lists([-1.0, 0.0, 1.0] * 2 + [-0.5, 0.5], pa.float64()),
            cl.OUTPUT + "output__0": _lists([0.1] * rows, pa.float32()),
        }
    )
    doc = drift_document("m:1", profile, signature, table, Thresholds())
    assert {f["name"]: f["kind"] for f in doc["features"]} == {"city": "categorical", "amount": "numeric"}
    assert not doc["drift"] and doc["notes"] == []

    without_inputs = table.drop_columns([cl.INPUT + "city", cl.INPUT + "amount"])
    doc = drift_document("m:1", profile, signature, without_inputs, Thresholds())
    assert doc["features"] == [] and "--capture-inputs none" in doc["notes"][0]
    doc = drift_document("m:1", profile, signature, table.drop_columns([cl.INPUT + "amount"]), Thresholds())
    assert [f["name"] for f in doc["features"]] == ["city"] and doc["notes"] == [
        "no captured column for amount: not compared"
    ]
