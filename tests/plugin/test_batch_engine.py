"""@deploy publishes a forest's batch engine file beside its checkpoint (a pipeline's: beside its
forest step's), only once the parity gate passed it; the node serves large batches on it and answers
as the native model does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from tritonclient.utils import InferenceServerException

from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import export_model
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.backends.forest_engines import ENGINE_FILES
from tritonflow.serving.frames import column_datatype, column_tensor

N_FEATURES = 10
ROWS = 1000


def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(2000, N_FEATURES, n_informative=6, random_state=0)
    return X.astype(np.float32), y


def booster() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=60, max_depth=6, random_state=0).fit(*data())


def frame() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = data()
    shop = np.random.default_rng(0).choice(["grocer", "fuel", "travel"], len(X))
    return pd.DataFrame({"shop": shop, **{f"x{j}": X[:, j] for j in range(N_FEATURES)}}), y


def publish(root: Path, model: Any, sample: Any = None) -> DeploymentRecord:
    sample = data()[0][:300] if sample is None else sample
    options = parse_options({"name": "scorer", "repository": str(root), "sample": "X"}, "ScoreFlow", False)
    meta = {"flow": "ScoreFlow", "run_id": "1", "task": "ScoreFlow/1/train/1"}
    return deploy(model, options, sample=sample, provenance=Provenance(metaflow=meta), sample_name="X")


def infer(
    client: httpclient.InferenceServerClient, rows: np.ndarray | pd.DataFrame
) -> tuple[np.ndarray, Any]:
    """The node's answer on rows (one input tensor) or on a frame (one tensor per column)."""
    if isinstance(rows, pd.DataFrame):
        columns = [(str(c), column_datatype(rows[c])) for c in rows.columns]
        arrays = {name: column_tensor(rows, name, datatype) for name, datatype in columns}
        tensors = [httpclient.InferInput(name, list(arrays[name].shape), dt) for name, dt in columns]
        for tensor in tensors:
            tensor.set_data_from_numpy(arrays[tensor.name()], binary_data=True)
    else:
        tensors = [httpclient.InferInput("input__0", list(rows.shape), "FP32")]
        tensors[0].set_data_from_numpy(rows, binary_data=True)
    result = client.infer("scorer", tensors)
    return result.as_numpy("output__0"), result.get_response()


def test_a_deployed_booster_serves_every_batch_size_as_xgboost_predicts(tmp_path: Path, serve: Any) -> None:
    model = booster()
    record = publish(tmp_path, model)
    file = ENGINE_FILES["xgboost"]
    note = record.model["parity"]["batch_engine"]
    assert (note["engine"], note["file"]) == ("xgboost", file) and note["max_abs_diff"] <= 1e-5
    published = tmp_path / "scorer" / "1" / file
    entry = next(f for f in record.files if f["path"] == f"1/{file}")
    assert entry["sha256"] == sha256_hex(published.read_bytes())
    assert publish(tmp_path, model).version == 1  # a retried task: the same files, no second version

    X, _ = data()
    native = model.predict_proba(X[:ROWS])
    for engine in ("auto", "xgboost"):
        node = serve(tmp_path, "--engine", engine)
        node.wait_for_state("scorer", 1, "READY")
        shown = node.client.get_model_metadata("scorer")["engine"]
        fil = ("nvforest-cpu", "treelite-gtil")
        assert shown == "xgboost-cpu" if engine == "xgboost" else shown.split("; ")[0] in fil
        for n in (1, 64, ROWS):
            answer, response = infer(node.client, X[:n])
            np.testing.assert_allclose(answer, native[:n], rtol=0, atol=1e-5)
            assert response["parameters"]["deployment_id"] == record.deployment_id
        node.stop()


def test_a_pipelines_forest_step_gets_its_batch_engine_and_the_ensemble_answers_as_the_pipeline(
    tmp_path: Path, serve: Any
) -> None:
    df, y = frame()
    prep = ColumnTransformer(
        [("shop", OneHotEncoder(), ["shop"]), ("numbers", StandardScaler(), list(df.columns[1:]))],
        sparse_threshold=0,
    )
    trees = xgb.XGBClassifier(n_estimators=60, max_depth=6, random_state=0)
    pipeline = Pipeline([("prep", prep), ("trees", trees)]).fit(df, y)
    record = publish(tmp_path, pipeline, df.head(300))
    step = ModelRepository(str(tmp_path)).read_record("scorer.forest", record.pins["scorer.forest"])
    note = step.model["parity"]["batch_engine"]
    assert (note["engine"], note["file"]) == ("xgboost", ENGINE_FILES["xgboost"]) and note[
        "max_abs_diff"
    ] <= 1e-5
    assert f"{step.version}/{note['file']}" in {f["path"] for f in step.files}

    native = pipeline.predict_proba(df.head(ROWS))
    node = serve(tmp_path, "--engine", "xgboost")
    node.wait_for_state("scorer", 1, "READY")
    assert node.client.get_model_metadata("scorer.forest")["engine"] == "xgboost-cpu"
    for n in (1, 64, ROWS):
        answer, response = infer(node.client, df.head(n))
        np.testing.assert_allclose(answer, native[:n], rtol=0, atol=1e-5)
        assert response["parameters"]["deployment_id"] == record.deployment_id
    # NOTE: OneHotEncoder(handle_unknown="error"): the node's test prediction (generated strings) was
    # refused too, and the version serves; a client's unknown category is a 400 naming it
    with pytest.raises(InferenceServerException) as refused:
        infer(node.client, df.head(2).assign(shop="unheard-of"))
    assert refused.value.status() == "400" and "Unknown Category" in refused.value.message()
    assert "handle_unknown" in refused.value.message()
    np.testing.assert_allclose(infer(node.client, df.head(3))[0], native[:3], rtol=0, atol=1e-5)


def test_a_batch_engine_file_failing_the_parity_gate_is_left_out_and_said_why() -> None:
    X, y = data()
    export = export_model(
        RandomForestClassifier(10, max_depth=4, random_state=0).fit(X, y), "auto", 10, "24.10"
    )
    other = RandomForestClassifier(10, max_depth=4, random_state=1).fit(X, y)
    wrong = dataclasses.replace(
        export, batch_engine_file=lambda: export_model(other, "auto", 10, "24.10").batch_engine_file()
    )
    kept, note = with_batch_engine(wrong, X[:200])
    assert kept.files == export.files  # the checkpoint alone: nothing of the wrong file is published
    assert note is not None and note["engine"] == "onnxruntime"
    assert note["left_out"].startswith("parity check failed")


def test_a_converter_failure_leaves_the_batch_engine_out_and_the_deploy_goes_on() -> None:
    X, y = data()
    export = export_model(RandomForestClassifier(5, random_state=0).fit(X, y), "auto", 10, "24.10")

    def refuses() -> tuple[str, bytes]:
        raise RuntimeError("this converter has no rule for these trees")

    kept, note = with_batch_engine(dataclasses.replace(export, batch_engine_file=refuses), X[:50])
    assert kept.files == export.files
    assert note == {
        "engine": "the batch engine",
        "left_out": "RuntimeError: this converter has no rule for these trees",
    }
