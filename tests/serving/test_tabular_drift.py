"""Drift of a deployed tabular ensemble, end to end: @deploy's publish profiles the training DataFrame
per column (string and category columns by their values' shares), a real node captures what clients
send column by column (BYTES columns as strings), and `tritonflow drift` finds exactly the columns
that moved, by PSI over categories for the string ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tabular_data import tabular_flow

from tritonflow.client import infer_frame
from tritonflow.lineage.reference import COLUMNS_SCHEMA, read_reference
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin import promotion
from tritonflow.plugin.exporters.tabular import export_ensemble
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.plugin.publish_ensemble import deploy_ensemble
from tritonflow.plugin.reference import training_artifact

MODEL = "fraud-pipeline"
TASK = "TabularFlow/3/train/2"


def tritonflow(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _deploy(repo: Path, model: Any, sample: pd.DataFrame, training: list[Any]) -> Any:
    options = parse_options({"name": MODEL, "repository": str(repo), "sample": "X_val"}, "TabularFlow", False)
    provenance = Provenance(metaflow={"flow": "TabularFlow", "run_id": "3", "task": TASK})
    return deploy(
        model, options, sample=sample, provenance=provenance, sample_name="X_val", training_data=training
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    flow = tabular_flow()
    X_train, X_val = flow.frame(1500, 0), flow.frame(1000, 1)
    model = flow.build("onehot-xgb").fit(X_train, flow.labels(X_train))
    X_test = flow.frame(300, 9)
    X_test["x1"] += 5.0  # NOTE: not training data: were it profiled, x1 would drift in every check below
    training = [
        training_artifact("X_train", "sha-train", X_train),
        training_artifact("X_test", "sha-test", X_test),
        training_artifact("y_train", "sha-y", flow.labels(X_train)),  # a target vector: no frame
    ]
    repo = tmp_path_factory.mktemp("tabular-drift") / "repo"
    record = _deploy(repo, model, X_val, [t for t in training if t is not None])
    return {"flow": flow, "repo": repo, "record": record, "model": model, "X_val": X_val}


def _send(server: Any, frame: pd.DataFrame, rows: int = 40) -> None:
    for start in range(0, len(frame), rows):
        infer_frame(server.url, MODEL, frame.iloc[start : start + rows])


def test_the_ensemble_reference_profiles_the_training_frame_per_column(deployed) -> None:
    record, X_train = deployed["record"], deployed["flow"].frame(1500, 0)
    assert record.reference and record.reference["path"] == f"{record.version}/reference.json"
    repository = ModelRepository(str(deployed["repo"]))
    profile = read_reference(repository.store, repository.resolve(f"{MODEL}:{record.version}"))
    assert profile["schema"] == COLUMNS_SCHEMA and profile["layout"] == "columns"
    assert [a["name"] for a in profile["source"]["artifacts"]] == ["X_train"] and profile["rows"] == 1500
    features = {f["name"]: f for f in profile["features"]}
    assert list(features) == ["merchant", "country", "x0", "x1", "x2", "x3"]
    merchant = features["merchant"]
    assert merchant["kind"] == "categorical" and merchant["distinct"] == 12 and merchant["other"] == 0
    shares = X_train["merchant"].value_counts(normalize=True)
    assert dict(zip(merchant["values"], merchant["shares"], strict=True)) == pytest.approx(shares.to_dict())
    assert merchant["shares"] == sorted(merchant["shares"], reverse=True)
    assert features["country"]["missing"] == 0 and sorted(features["country"]["values"]) == [
        "DE",
        "FR",
        "IT",
        "NL",
        "PL",
    ]
    x1 = features["x1"]
    assert x1["kind"] == "numeric" and x1["missing"] == pytest.approx(X_train["x1"].isna().mean())
    assert x1["mean"] == pytest.approx(X_train["x1"].mean(), abs=1e-5), "X_test's shifted x1 kept out"
    # the predictions: the native pipeline's on the sample
    assert profile["prediction"]["rows"] == 1000
    native = deployed["model"].predict_proba(deployed["X_val"])[:, 1]
    assert profile["prediction"]["mean"] == pytest.approx(native.mean(), abs=1e-5)


def test_captured_columns_drift_exactly_where_the_traffic_moved(deployed, serve, tmp_path) -> None:
    flow, repo, version = deployed["flow"], deployed["repo"], deployed["record"].version
    same_root, moved_root = tmp_path / "same", tmp_path / "moved"

    server = serve(repo, "--capture", str(same_root))
    server.wait_for_state(MODEL, version, "READY")
    like_training = flow.frame(1600, 5)
    _send(server, like_training)
    assert server.stop() == 0  # NOTE: SIGTERM writes every accepted row before exit

    (file,) = same_root.rglob("*.parquet")
    captured = pq.read_table(file)
    assert captured.schema.field("input.merchant").type == pa.list_(pa.string())
    assert captured.schema.field("input.x3").type == pa.list_(pa.float64())
    first = captured.slice(0, 40).to_pydict()
    assert [v for (v,) in first["input.merchant"]] == like_training["merchant"].head(40).tolist()
    assert [v for (v,) in first["input.country"]] == like_training["country"].astype(str).head(40).tolist()

    same = tritonflow("drift", f"{MODEL}:{version}", "--captures", same_root, "--repository", repo, "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    doc = json.loads(same.stdout)
    assert (doc["drift"], doc["rows"], doc["notes"]) == (False, 1600, [])
    kinds = {f["name"]: (f["kind"], f["ks"] is None) for f in doc["features"]}
    assert kinds == {
        "merchant": ("categorical", True),
        "country": ("categorical", True),
        **{f"x{i}": ("numeric", False) for i in range(4)},
    }

    moved = flow.frame(1600, 6)
    rng = np.random.default_rng(7)
    moved.loc[rng.random(len(moved)) < 0.6, "merchant"] = "m-0"  # one merchant takes most of the traffic
    moved["x3"] += 2.0
    server = serve(repo, "--capture", str(moved_root))
    server.wait_for_state(MODEL, version, "READY")
    _send(server, moved)
    assert server.stop() == 0
    report = tmp_path / "drift.html"
    args = ("drift", f"{MODEL}:{version}", "--captures", moved_root, "--repository", repo)
    checked = tritonflow(*args, "--json", "--html", report)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    doc = json.loads(checked.stdout)
    drifting = [f["name"] for f in doc["features"] if f["drift"]]
    assert sorted(drifting) == ["merchant", "x3"], doc["features"]
    assert set(doc["drifting"]) - {"prediction"} == {"merchant", "x3"}
    merchant = next(f for f in doc["features"] if f["name"] == "merchant")
    assert merchant["top"]["value"] == "m-0" and merchant["top"]["current"] > 0.6
    assert merchant["bins"]["labels"][-2:] == ["(other)", "(missing)"]
    assert sum(merchant["bins"]["current"]) == pytest.approx(1.0)
    assert report.read_text().count("<img") == len(doc["drifting"])

    text = tritonflow(*args)
    assert text.returncode == 1, text.stdout + text.stderr
    line = next(row for row in text.stdout.splitlines() if row.startswith("merchant"))
    assert "DRIFT" in line and "m-0: " in line and " - " in line, text.stdout  # no KS for a category


def test_a_retried_task_gets_its_ensemble_back_without_deciding_again(
    deployed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # NOTE: one export for both attempts: a retry publishes the same files (skl2onnx names each graph anew)
    export = export_ensemble(deployed["model"], deployed["X_val"], "26.06")
    options = parse_options({"name": MODEL, "repository": str(tmp_path / "repo")}, "TabularFlow", False)
    provenance = Provenance(metaflow={"flow": "TabularFlow", "run_id": "4", "task": "TabularFlow/4/train/1"})
    first = deploy_ensemble(export, options, deployed["X_val"], provenance, "X_val")

    def decide(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a retried task decided its promotion again")

    monkeypatch.setattr(promotion, "decide", decide)
    again = deploy_ensemble(export, options, deployed["X_val"], provenance, "X_val")
    assert again.deployment_id == first.deployment_id and again.reference == first.reference
    assert ModelRepository(str(tmp_path / "repo")).version_numbers(MODEL) == [first.version]
