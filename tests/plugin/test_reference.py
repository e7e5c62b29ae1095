"""The reference profile @deploy writes: a real Metaflow run in a subprocess writes reference.json, the
record lists it, and the node still serves the version (its integrity check loads the record's files only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_deploy_flow import TINY_FLOW, only_record, run_flow

from tritonflow.lineage.records import sha256_hex
from tritonflow.plugin.reference import BINS, PROFILE_ROWS, profile

pytestmark = pytest.mark.slow


def tiny_rows() -> np.ndarray:
    """The rows TinyFlow's start step makes (its `X` artifact)."""
    return np.random.default_rng(0).normal(size=(400, 8)).astype("float32")


def test_a_deploy_writes_reference_json_listed_in_its_record(tmp_path, metaflow_env, serve) -> None:
    repo = tmp_path / "repo"
    result = run_flow(
        TINY_FLOW, metaflow_env, tmp_path, deploy={"name": "tiny", "repository": str(repo), "sample": "X"}
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, record = only_record(str(repo), "tiny")
    data = (repo / "tiny" / "1" / "reference.json").read_bytes()
    assert record.reference == {"path": "1/reference.json", "sha256": sha256_hex(data), "size": len(data)}
    doc = json.loads(data)
    assert doc["schema"] == "tritonflow.reference/v1" and doc["rows"] == 400 and doc["source"] == "X"
    X = tiny_rows()
    for j, feature in enumerate(doc["features"]):
        assert feature["min"] == pytest.approx(X[:, j].min()) and feature["max"] == pytest.approx(
            X[:, j].max()
        )
        assert feature["missing"] == 0 and len(feature["shares"]) == BINS
    assert 0 <= doc["prediction"]["min"] <= doc["prediction"]["max"] <= 1

    # the node checks a version's files against the record, and loads only those: it serves this one
    server = serve(repo)
    assert server.wait_for_state("tiny", 1, "READY")
    answer = server.json(
        "POST",
        "/v2/models/tiny/infer",
        {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 8], "data": X[0].tolist()}]},
    )
    assert answer["parameters"]["deployment_id"] == record.deployment_id


def test_profile_min_max_and_missing_cover_every_row() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(PROFILE_ROWS + 50_000, 2)).astype(np.float32)
    rows[::10, 1] = np.nan
    rows[7, 0] = 1e6  # one extreme row: a subsample would likely miss it
    doc = profile(rows, ["a", "b"])
    a, b = doc["features"]
    assert doc["profiled_rows"] == PROFILE_ROWS and doc["rows"] == len(rows)
    assert a["max"] == 1e6 and a["missing"] == 0
    assert b["missing"] == pytest.approx(0.1) and b["min"] == pytest.approx(float(np.nanmin(rows[:, 1])))
    assert sum(a["shares"]) == pytest.approx(1) and all(abs(s - 1 / BINS) < 0.005 for s in a["shares"])
    assert len(a["quantiles"]) == len(doc["levels"]) == 101 and doc["prediction"] is None
