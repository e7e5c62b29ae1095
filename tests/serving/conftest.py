"""Repositories of small models trained here and published as @deploy does, and the real server on them.

The server is the `tritonflow serve` command in a subprocess on a free loopback port; tests talk
to it with the unmodified tritonclient.http client or raw http.client.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import sklearn
import treelite
from servers import Server, wait_for  # noqa: F401 (re-exported to the tests here)
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.lineage.records import DeploymentRecord, sha256_hex, utc_now
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.exporters import export_model
from tritonflow.serving.model_config import ConfigSpec, ModelConfig, TensorSpec, build_config, render

N_FEATURES = 8
TRITON_VERSION = "26.06"
PROBA_ATOL = 1e-5


# -- models ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """A fitted classifier and the files a version folder holds for it."""

    estimator: RandomForestClassifier
    files: dict[str, bytes]
    backend: str  # "fil" | "onnxruntime"

    def proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)


@cache
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(400, N_FEATURES, n_informative=5, random_state=0)
    return X.astype(np.float32), y


def fil_forest(est: RandomForestClassifier) -> Trained:
    """A fitted forest as @deploy's exporter writes it: a Treelite checkpoint (FIL `treelite_checkpoint`)."""
    return Trained(est, export_model(est, "treelite", est.n_features_in_, TRITON_VERSION).files, "fil")


@cache
def forest(seed: int = 0) -> Trained:
    """A small random forest, FIL's."""
    return fil_forest(RandomForestClassifier(n_estimators=20, max_depth=6, random_state=seed).fit(*data()))


@cache
def onnx_forest() -> Trained:
    """The same kind of forest as ONNX with two outputs: `label` (INT64) and `probabilities` (FP32)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est = forest(1).estimator
    graph = convert_sklearn(
        est, initial_types=[("input__0", FloatTensorType([None, N_FEATURES]))], options={"zipmap": False}
    )
    return Trained(est, {"model.onnx": graph.SerializeToString()}, "onnxruntime")


def config_for(
    name: str,
    trained: Trained,
    *,
    max_batch_size: int = 1024,
    queue_delay_us: int | None = 100,
    preferred: tuple[int, ...] = (),
    latest: int = 1,
    policy: str | None = None,
    specific: tuple[int, ...] = (),
) -> ModelConfig:
    """A complete config as build_config writes it; queue_delay_us None: no dynamic batching;
    max_batch_size 0: tensors without a batch dimension (their dims start with -1 instead)."""
    rows = () if max_batch_size else (-1,)
    if trained.backend == "fil":
        outputs: tuple[TensorSpec, ...] = (TensorSpec("output__0", "FP32", (*rows, 2)),)
        parameters = {
            "model_type": "treelite_checkpoint",
            "is_classifier": "true",
            "predict_proba": "true",
            "threshold": "0.5",
        }
    else:
        label = TensorSpec("label", "INT64", rows or (1,))
        outputs = (label, TensorSpec("probabilities", "FP32", (*rows, 2)))
        parameters = {}
    spec = ConfigSpec(
        name=name,
        backend=trained.backend,
        inputs=(TensorSpec("input__0", "FP32", (*rows, N_FEATURES)),),
        outputs=outputs,
        max_batch_size=max_batch_size,
        max_queue_delay_us=queue_delay_us or 0,
        parameters=parameters,
        latest_versions=latest,
    )
    config = build_config(spec)
    if queue_delay_us is None:
        config.ClearField("dynamic_batching")
    elif preferred:
        config.dynamic_batching.preferred_batch_size.extend(preferred)
    if policy == "all":
        config.version_policy.all.SetInParent()
    elif policy == "specific":
        config.version_policy.specific.versions.extend(specific)
    return config


def record_maker(
    repo: ModelRepository, name: str, config_text: str, trained: Trained, run_id: str
) -> Callable[[int], DeploymentRecord]:
    """A realistic record, as the @deploy decorator writes it, for the version publish claims."""

    def make(version: int) -> DeploymentRecord:
        task = f"TestFlow/{run_id}/select/7"
        return DeploymentRecord(
            deployment_id=f"{name}:{version}@TestFlow/{run_id}",
            model_name=name,
            version=version,
            created_at=utc_now(),
            repository=repo.uri,
            files=[
                {"path": f"{version}/{file}", "sha256": sha256_hex(blob), "size": len(blob)}
                for file, blob in sorted(trained.files.items())
            ],
            format="treelite" if trained.backend == "fil" else "onnx",
            backend=trained.backend,
            config={"sha256": sha256_hex(config_text.encode()), "text_length": len(config_text)},
            signature={
                "n_features": N_FEATURES,
                "feature_names": [f"f{i}" for i in range(N_FEATURES)],
                "inputs": [{"name": "input__0", "datatype": "FP32", "dims": [N_FEATURES]}],
            },
            triton_version=TRITON_VERSION,
            exporter={"treelite": treelite.__version__, "scikit-learn": sklearn.__version__},
            metaflow={
                "flow": "TestFlow",
                "run_id": run_id,
                "step": "select",
                "task": task,
                "user": "tester",
                "tags": ["serving-tests"],
                "git": {"commit_sha": "0" * 40, "branch_name": "main", "has_uncommitted_changes": False},
                "metaflow_version": "2.19.0",
                "python_version": sys.version.split()[0],
            },
            data=[{"name": "train", "sha": sha256_hex(data()[0].tobytes()), "size": 1, "task": task}],
            metrics={"accuracy": 0.9},
            model={
                "class": "sklearn.ensemble.RandomForestClassifier",
                "hyperparameters": {"n_estimators": 20, "max_depth": 6},
            },
            selection={
                "rule": "max:accuracy",
                "winner": {"label": "forest", "score": 0.9, "task": task, "index": 0},
                "candidates": [{"label": "forest", "score": 0.9, "task": task, "index": 0}],
            },
        )

    return make


def publish(
    uri: str | Path,
    name: str,
    trained: Trained,
    config: ModelConfig | None = None,
    *,
    run_id: str = "1795314379884117",
    files: dict[str, bytes] | None = None,
) -> DeploymentRecord:
    """Publish one version as the plugin does: claim, config, files, the record last."""
    repo = ModelRepository(str(uri))
    text = render(config or config_for(name, trained))
    return repo.publish(
        name,
        text,
        trained.files if files is None else files,
        record_maker(repo, name, text, trained, run_id),
        owner={"run": f"TestFlow/{run_id}"},
    )
