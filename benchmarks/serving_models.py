"""The benchmarks' models and their repositories: trained here, deployed by tritonflow's own code."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 30
BATCH_ROWS = (1_000, 65_536)


@dataclass(frozen=True)
class BenchModel:
    name: str
    title: str
    estimator: Any
    rows: np.ndarray  # request rows, float32, never seen in training


def train(name: str, quick: bool) -> BenchModel:
    """The starter pack's model (random data, 50 trees of depth 2), or a production-size XGBoost."""
    rng = np.random.default_rng(0)
    if name == "starter-rf":
        from sklearn.ensemble import RandomForestClassifier

        n = 20_000 if quick else 100_000  # the starter pack trains on 100,000 random rows, random labels
        X, y = rng.random((n, N_FEATURES)), rng.integers(0, 2, n)
        rf = RandomForestClassifier(n_estimators=50, max_depth=2, random_state=0, n_jobs=-1).fit(X, y)
        # NOTE: n_jobs as the starter pack pickles it; -1 makes each 1-row predict ~10 ms of joblib hand-offs
        rf.set_params(n_jobs=None)
        rows = rng.random((max(BATCH_ROWS), N_FEATURES)).astype(np.float32)
        return BenchModel(name, "RandomForest, 50 trees, depth 2 (the starter pack's)", rf, rows)
    import xgboost
    from sklearn.datasets import make_classification

    n = 20_000
    X, y = make_classification(n + max(BATCH_ROWS), N_FEATURES, n_informative=12, random_state=0)
    booster = xgboost.XGBClassifier(n_estimators=500, max_depth=8, random_state=0).fit(X[:n], y[:n])
    return BenchModel(name, "XGBoost, 500 rounds, depth 8", booster, X[n:].astype(np.float32))


def publish(model: BenchModel, root: Path, gpu: bool) -> dict[str, Path]:
    """variant -> repository, each deployed by tritonflow's own code and holding one model.

    fil: the Treelite checkpoint (tritonflow's forest engines and Triton); onnx: the ONNX export,
    under `<name>-onnx`; nobatch: the checkpoint again, under `<name>-nobatch`, its config
    edited to drop `dynamic_batching` (@deploy always writes it); gpu: KIND_GPU, for `--gpu`.
    Plus model.pkl, the pickle the FastAPI baseline loads.
    """
    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy

    variants = {
        "fil": ("treelite", "cpu", ""),
        "onnx": ("onnx", "cpu", "-onnx"),
        "nobatch": ("treelite", "cpu", "-nobatch"),
    }
    if gpu:
        variants["gpu"] = ("treelite", "gpu", "-gpu")
    repositories = {}
    for variant, (fmt, kind, suffix) in variants.items():
        repository = root / variant
        attributes = {
            "name": model.name + suffix,
            "repository": str(repository),
            "format": fmt,
            "instance_kind": kind,
            "max_batch_size": max(BATCH_ROWS),
            "max_queue_delay_us": 100,
        }
        options = parse_options(attributes, "BenchFlow", is_join=False)
        metaflow = {"flow": "BenchFlow", "run_id": "1", "task": f"BenchFlow/1/train/{variant}"}
        deploy(model.estimator, options, sample=model.rows[:1_000], provenance=Provenance(metaflow=metaflow))
        repositories[variant] = repository
    _drop_dynamic_batching(repositories["nobatch"] / f"{model.name}-nobatch" / "config.pbtxt")
    (root / "model.pkl").write_bytes(pickle.dumps(model.estimator))
    return repositories


def _drop_dynamic_batching(path: Path) -> None:
    from tritonflow.serving import model_config

    config = model_config.parse_config(path.read_text())
    config.ClearField("dynamic_batching")
    text = model_config.render(config)
    model_config.check_config(text, where=str(path))
    path.write_text(text)
