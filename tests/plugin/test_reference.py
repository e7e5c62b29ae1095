"""The reference profile @deploy writes: a real Metaflow run in a subprocess writes reference.json, the
record lists it, and the node still serves the version (its integrity check loads the record's files only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_deploy_flow import TINY_FLOW, client, only_record, run_flow

from tritonflow.lineage.records import sha256_hex
from tritonflow.plugin.reference import (
    BINS,
    PROFILE_ROWS,
    TRAINING_ROWS,
    data_rows,
    fits,
    is_training,
    profile,
    reference_profile,
)

HOLDOUT_FLOW = Path(__file__).parent / "flows" / "holdout_flow.py"

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
    assert doc["schema"] == "tritonflow.reference/v1" and doc["rows"] == 400
    # TinyFlow's start step keeps X (the sample) and y (a vector): no training matrix, so the sample's profile
    assert doc["source"] == {
        "kind": "sample",
        "artifacts": [{"name": "X", "sha": None, "rows": 400}],
        "rows": 400,
    }
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


def test_the_profile_describes_the_training_matrix_and_the_predictions_the_sample(
    tmp_path, metaflow_env
) -> None:
    repo = tmp_path / "repo"
    deploy = {"name": "holdout", "repository": str(repo), "sample": "X_val"}
    result = run_flow(HOLDOUT_FLOW, metaflow_env, tmp_path, deploy=deploy)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, record = only_record(str(repo), "holdout")
    doc = json.loads((repo / "holdout" / "1" / "reference.json").read_bytes())
    shas = {entry["name"]: entry["sha"] for entry in record.data}
    assert {"X_train", "y_train", "X_val", "embedding"} <= set(shas)
    # y_train (a vector), X_val (the sample) and embedding (two columns, not four) are not profiled
    assert doc["source"] == {
        "kind": "training",
        "artifacts": [{"name": "X_train", "sha": shas["X_train"], "rows": 600}],
        "rows": 600,
    }
    assert doc["rows"] == 600 and [f["name"] for f in doc["features"]] == ["f0", "f1", "f2", "f3"]
    stats = client(
        metaflow_env,
        tmp_path,
        """
task = Flow("HoldoutFlow").latest_run["train"].task
X, V = task["X_train"].data, task["X_val"].data
train = [X.mean().tolist(), X.min().tolist(), X.max().tolist()]
print(json.dumps({"train": train, "val": V.mean().tolist()}))
""",
    )
    means, lows, highs = stats["train"]
    for j, feature in enumerate(doc["features"]):
        assert feature["mean"] == pytest.approx(means[j], abs=1e-5)
        assert feature["min"] == pytest.approx(lows[j]) and feature["max"] == pytest.approx(highs[j])
        assert abs(feature["mean"] - stats["val"][j]) > 2  # the shifted sample would say otherwise
    # the predictions stay on the sample: its 200 rows
    assert doc["prediction"]["rows"] == 200


def test_only_numeric_matrices_of_the_signature_count_as_training_data() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(50, 3)), columns=["a", "b", "c"])
    rows = data_rows("X", "sha", frame)
    assert rows is not None and rows.columns == ["a", "b", "c"] and rows.rows.dtype == np.float32
    assert fits(rows, 3, ["a", "b", "c"]) and fits(rows, 3, None)
    assert not fits(rows, 3, ["c", "b", "a"]), "the same columns in another order are other data"
    assert not fits(rows, 4, None)
    array = data_rows("X", None, frame.to_numpy())
    assert array is not None and fits(array, 3, ["a", "b", "c"])  # an ndarray has no names to check
    assert data_rows("y", None, frame["a"].to_numpy()) is None  # a target vector
    assert data_rows("t", None, pd.DataFrame({"city": ["Paris", "Rome"], "n": [1, 2]})) is None


def test_a_training_matrix_is_capped_in_rows() -> None:
    big = np.arange(TRAINING_ROWS + 1000, dtype=np.float32).reshape(-1, 1)
    rows = data_rows("X_train", "sha", big)
    assert rows is not None and len(rows.rows) == TRAINING_ROWS and rows.total_rows == len(big)
    assert rows.rows[-1, 0] > TRAINING_ROWS, "drawn over every row, not the head"


def test_matrices_named_for_training_are_the_reference_when_there_are_any() -> None:
    rng = np.random.default_rng(1)
    train = data_rows("X_train", "a", rng.normal(0, 1, size=(300, 2)))
    test = data_rows("X_test", "b", rng.normal(5, 1, size=(100, 2)))
    other = data_rows("features", "c", rng.normal(-5, 1, size=(100, 2)))
    assert train is not None and test is not None and other is not None
    sample = rng.normal(size=(20, 2)).astype(np.float32)
    doc = reference_profile(sample, "X_val", [train, test, other], (2, None), lambda x: x[:, :1])
    assert [a["name"] for a in doc["source"]["artifacts"]] == ["X_train"]
    assert doc["rows"] == 300 and abs(doc["features"][0]["mean"]) < 0.3, "X_test's shift kept out"
    # without a training name, every matching matrix counts
    doc = reference_profile(sample, "X_val", [test, other], (2, None), lambda x: x[:, :1])
    assert [a["name"] for a in doc["source"]["artifacts"]] == ["X_test", "features"]
    assert [is_training(n) for n in ("X_train", "Xtrain", "train_df", "X_training")] == [True] * 4
    assert not any(is_training(n) for n in ("X_test", "X_val", "strain", "constraint", "trainset"))
