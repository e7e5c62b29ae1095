"""A client learns which output column is which class: from Triton's labels file beside config.pbtxt,
and from the node's model metadata. Models are published by the plugin's own `deploy`, served by
the real `tritonflow serve`, read with the unmodified tritonclient.http client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Server, wait_for
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.model_config import parse_config

CLASSES = ["fraud", "ok", "review"]  # sklearn's classes_ order: sorted


def rows(n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(300, 6, n_classes=n_classes, n_informative=4, random_state=0)
    return X.astype(np.float32), y


def classifier(classes: list[Any]) -> tuple[RandomForestClassifier, np.ndarray]:
    X, y = rows(len(classes))
    return RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, np.array(classes)[y]), X


def regressor() -> tuple[RandomForestRegressor, np.ndarray]:
    X, y = make_regression(300, 6, random_state=0)
    return RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0).fit(X, y), X.astype(np.float32)


def publish(repository: str | Path, name: str, model: Any, X: np.ndarray, run_id: str) -> DeploymentRecord:
    """As @deploy publishes, without a flow (the record names a made-up run)."""
    opts = parse_options({"name": name, "repository": str(repository)}, "LabelFlow", is_join=False)
    meta = {"flow": "LabelFlow", "run_id": run_id, "task": f"LabelFlow/{run_id}/train/1"}
    return deploy(model, opts, sample=X, provenance=Provenance(metaflow=meta))


def listing(repo: ModelRepository, model: str) -> dict[str, str | None]:
    """Every file of a model folder with its fingerprint: what a refused deploy must leave as it was."""
    return {f.key: repo.store.fingerprint(f.key) for f in repo.store.walk(model)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels") / "repo"
    publish(root, "fraud-labels", *classifier(CLASSES), "1")
    publish(root, "price", *regressor(), "2")
    publish(root, "lost-labels", *classifier(CLASSES), "3")
    return root


@pytest.fixture(scope="module")
def server(serve_module: Any, repo: Path) -> Server:
    # NOTE: before the node starts: its first check of lost-labels finds the file missing
    (repo / "lost-labels" / "labels.txt").rename(repo / "lost-labels.txt")
    return serve_module(repo)


def test_a_classifier_writes_its_classes_beside_config_pbtxt(repo: Path) -> None:
    record = ModelRepository(repo).read_record("fraud-labels", 1)
    labels = (repo / "fraud-labels" / "labels.txt").read_bytes()
    assert labels.decode().split("\n") == [*CLASSES, ""]  # one class per line, in column order
    assert record.model["classes"] == CLASSES
    (output,) = parse_config((repo / "fraud-labels" / "config.pbtxt").read_text()).output
    assert (output.name, list(output.dims), output.label_filename) == ("output__0", [3], "labels.txt")
    assert record.config["model_files"] == [
        {"path": "labels.txt", "sha256": sha256_hex(labels), "size": len(labels)}
    ]
    assert not list((repo / "fraud-labels" / "1").glob("labels*"))  # per model, not per version
    checked = subprocess.run(
        [sys.executable, "-m", "tritonflow", "check-config", str(repo / "fraud-labels")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_numeric_classes_are_written_as_text(tmp_path: Path) -> None:
    publish(tmp_path, "binary", *classifier([0, 1]), "4")
    assert (tmp_path / "binary" / "labels.txt").read_text() == "0\n1\n"
    assert ModelRepository(tmp_path).read_record("binary", 1).model["classes"] == [0, 1]


def test_a_second_deploy_leaves_the_labels_file_and_config_untouched(tmp_path: Path) -> None:
    """Unchanged bytes are not rewritten: a rewrite is a change to every node watching the folder."""
    publish(tmp_path, "again", *classifier(CLASSES), "5")
    repo = ModelRepository(tmp_path)
    before = {key: repo.store.fingerprint(f"again/{key}") for key in ("labels.txt",)}
    publish(tmp_path, "again", *classifier(CLASSES), "6")
    assert sorted(repo.versions("again")) == [1, 2]
    assert {key: repo.store.fingerprint(f"again/{key}") for key in before} == before
    # NOTE: config.pbtxt changes once, by its version_policy: promote="always" made v2 champion
    assert list(parse_config(repo.read_config("again")).version_policy.specific.versions) == [2]


def test_a_regressor_has_no_labels(repo: Path) -> None:
    assert not (repo / "price" / "labels.txt").exists()
    (output,) = parse_config((repo / "price" / "config.pbtxt").read_text()).output
    assert not output.label_filename
    assert ModelRepository(repo).read_record("price", 1).config["model_files"] == []


def test_other_classes_under_the_same_name_are_refused_and_publish_nothing(tmp_path: Path) -> None:
    publish(tmp_path, "m", *classifier(CLASSES), "5")
    repo = ModelRepository(tmp_path)
    before = listing(repo, "m")
    with pytest.raises(TritonflowError) as refused:
        publish(tmp_path, "m", *classifier(["fraud", "ok", "spam"]), "6")
    message = str(refused.value)
    assert "['fraud', 'ok', 'review']" in message and "['fraud', 'ok', 'spam']" in message
    assert "deploy under a new name" in message and "\n" not in message
    assert listing(repo, "m") == before
    assert publish(tmp_path, "m", *classifier(CLASSES), "7").version == 2  # the same classes deploy


def test_a_class_with_a_line_break_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TritonflowError, match=r"class 'ok\\nnot' holds a line break"):
        publish(tmp_path, "m", *classifier(["fraud", "ok\nnot"]), "8")
    assert not (tmp_path / "m").exists()


def test_the_node_metadata_says_which_column_is_which(server: Server) -> None:
    for version in ("", "1"):
        (output,) = server.client.get_model_metadata("fraud-labels", version)["outputs"]
        assert output == {
            "name": "output__0",
            "datatype": "FP32",
            "shape": [-1, 3],
            "parameters": {"classes": CLASSES},
        }
    assert server.client.get_model_metadata("price")["outputs"] == [
        {"name": "output__0", "datatype": "FP32", "shape": [-1, 1]}
    ]
    (config_output,) = server.client.get_model_config("fraud-labels")["output"]
    assert config_output["label_filename"] == "labels.txt"  # as Triton's config endpoint shows it


def test_a_missing_labels_file_is_a_config_error_until_it_is_back(server: Server, repo: Path) -> None:
    (row,) = [r for r in server.index() if r["name"] == "lost-labels"]
    assert row["state"] == "UNAVAILABLE"
    assert (
        "label_filename 'labels.txt' of output 'output__0': no such file in the model folder" in row["reason"]
    )
    checked = subprocess.run(
        [sys.executable, "-m", "tritonflow", "check-config", str(repo / "lost-labels")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1 and "no such file in the model folder" in checked.stdout
    (repo / "lost-labels.txt").rename(repo / "lost-labels" / "labels.txt")
    server.wait_for_state("lost-labels", 1, "READY")
    classes = server.client.get_model_metadata("lost-labels")["outputs"][0]["parameters"]["classes"]
    assert classes == CLASSES


def test_labels_that_do_not_fit_the_columns_are_a_config_error(tmp_path: Path) -> None:
    publish(tmp_path, "m", *classifier(CLASSES), "9")
    (tmp_path / "m" / "labels.txt").write_text("fraud\nok\n")
    checked = subprocess.run(
        [sys.executable, "-m", "tritonflow", "check-config", str(tmp_path)], capture_output=True, text=True
    )
    assert checked.returncode == 1
    assert "holds 2 labels for 3 columns: one label per column, in column order" in checked.stdout


def test_labels_on_s3_are_written_checked_and_served(s3_bucket: str, serve: Any) -> None:
    publish(s3_bucket, "fraud-labels", *classifier(CLASSES), "10")
    repo = ModelRepository(s3_bucket)
    assert repo.store.read("fraud-labels/labels.txt") == "".join(f"{c}\n" for c in CLASSES).encode()
    before = listing(repo, "fraud-labels")
    with pytest.raises(TritonflowError, match="keeps its classes in their order"):
        publish(s3_bucket, "fraud-labels", *classifier(["a", "b", "c"]), "11")
    assert listing(repo, "fraud-labels") == before
    node = serve(s3_bucket)
    wait_for(lambda: node.index_row("fraud-labels", 1).get("state") == "READY", what="fraud-labels:1 READY")
    (output,) = node.client.get_model_metadata("fraud-labels")["outputs"]
    assert output["parameters"] == {"classes": CLASSES}
