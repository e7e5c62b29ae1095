"""@deploy publishes a forest's batch engine file beside its checkpoint, only once the parity gate
passed it; the node serves large batches on it and answers as the native model does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import export_model
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.backends.forest_engines import ENGINE_FILES

N_FEATURES = 10
ROWS = 1000


def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(2000, N_FEATURES, n_informative=6, random_state=0)
    return X.astype(np.float32), y


def booster() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=60, max_depth=6, random_state=0).fit(*data())


def publish(root: Path, model: Any, run: str = "1") -> DeploymentRecord:
    X, _ = data()
    options = parse_options({"name": "scorer", "repository": str(root), "sample": "X"}, "ScoreFlow", False)
    meta = {"flow": "ScoreFlow", "run_id": run, "task": f"ScoreFlow/{run}/train/1"}
    return deploy(model, options, sample=X[:300], provenance=Provenance(metaflow=meta), sample_name="X")


def infer(client: httpclient.InferenceServerClient, rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = client.infer("scorer", [tensor])
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
