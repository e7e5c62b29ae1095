"""A forest's batch engine (serving/backends/forest_engines.py): the file @deploy adds beside the
checkpoint, chosen per batch size at load, answering as the native model does on every path."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import treelite.sklearn
import xgboost as xgb
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor

from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import config_spec, export_model
from tritonflow.plugin.exporters.base import Export
from tritonflow.serving.backends import BackendError, forest_engines, load_backend
from tritonflow.serving.backends.forest_engines import ENGINE_FILES, Engine, fastest
from tritonflow.serving.model_config import build_config

N_FEATURES = 12
TOLERANCE = 1e-5


def classes(n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(1500, N_FEATURES, n_informative=6, n_classes=n, random_state=0)
    return X.astype(np.float32), y


def values() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_regression(1500, N_FEATURES, random_state=0)
    return X.astype(np.float32), y


# name -> (model, rows, the engine whose file @deploy adds)
MODELS: dict[str, tuple[Any, np.ndarray, str]] = {}


def model(name: str) -> tuple[Any, np.ndarray, str]:
    if name not in MODELS:
        fits = {
            "xgboost-binary": (lambda: xgb.XGBClassifier(n_estimators=40, max_depth=5), classes, "xgboost"),
            "xgboost-multiclass": (
                lambda: xgb.XGBClassifier(n_estimators=20, max_depth=4),
                lambda: classes(3),
                "xgboost",
            ),
            "xgboost-regressor": (lambda: xgb.XGBRegressor(n_estimators=30, max_depth=5), values, "xgboost"),
            "lightgbm-binary": (
                lambda: lgb.LGBMClassifier(n_estimators=40, verbose=-1),
                classes,
                "onnxruntime",
            ),
            "sklearn-forest": (
                lambda: RandomForestClassifier(30, max_depth=6, random_state=0),
                classes,
                "onnxruntime",
            ),
            "sklearn-forest-regressor": (
                lambda: RandomForestRegressor(20, max_depth=6, random_state=0),
                values,
                "onnxruntime",
            ),
            "sklearn-hist-gradient-boosting": (
                lambda: HistGradientBoostingClassifier(max_iter=30),
                classes,
                "onnxruntime",
            ),
        }
        make, dataset, engine = fits[name]
        X, y = dataset()
        MODELS[name] = (make().fit(X, y), X, engine)
    return MODELS[name]


def exported(name: str) -> tuple[Export, dict[str, Any] | None, np.ndarray]:
    trained, X, _ = model(name)
    export = export_model(trained, "auto", N_FEATURES, "24.10")
    return (*with_batch_engine(export, X[:500]), X)


def version_dir(tmp_path: Path, export: Export) -> Path:
    folder = tmp_path / "1"
    folder.mkdir(exist_ok=True)
    for file, data in export.files.items():
        (folder / file).write_bytes(data)
    return folder


def loaded(folder: Path, export: Export, engine: str) -> Any:
    return load_backend(folder, build_config(config_spec(export, "m", max_batch_size=4096)), engine)


def served(backend: Any, rows: np.ndarray) -> np.ndarray:
    return backend.predict({"input__0": rows})["output__0"]


@pytest.mark.parametrize("name", ["xgboost-binary", "xgboost-multiclass", "xgboost-regressor",
                                  "lightgbm-binary", "sklearn-forest", "sklearn-forest-regressor",
                                  "sklearn-hist-gradient-boosting"])  # fmt: skip
def test_every_family_gets_a_batch_engine_that_answers_as_the_model(tmp_path: Path, name: str) -> None:
    export, note, X = exported(name)
    engine = model(name)[2]
    assert note is not None and note["engine"] == engine and "left_out" not in note
    assert note["file"] == ENGINE_FILES[engine] and note["file"] in export.files
    native = export.native_predict(X)
    # NOTE: the parity gate's rule: regressors relative to the largest value (plugin/parity.py)
    scale = 1.0 if export.n_classes else max(1.0, float(np.abs(native).max()))
    assert note["max_abs_diff"] <= TOLERANCE * scale
    folder = version_dir(tmp_path, export)
    for choice in ("auto", engine, "fil"):
        backend = loaded(folder, export, choice)
        if choice == engine:
            assert backend.engine == f"{engine}-cpu"
        # NOTE: 1 row, one chunk's size and a whole batch: every side of the measured crossover
        for n in (1, 64, 1500):
            np.testing.assert_allclose(served(backend, X[:n]), native[:n], rtol=0, atol=TOLERANCE * scale)
        backend.unload()


def test_auto_sends_large_batches_to_xgboost_on_a_deep_booster(tmp_path: Path) -> None:
    """500 rounds of depth 8: XGBoost's predictor ran 4.4x nvForest at 1,024 rows here, far above the
    1.2x a batch engine needs, so the choice cannot be noise; one row stays on FIL's engine."""
    X, y = classes()
    booster = xgb.XGBClassifier(n_estimators=300, max_depth=8, random_state=0).fit(X, y)
    export, note = with_batch_engine(export_model(booster, "auto", N_FEATURES, "24.10"), X[:200])
    assert note is not None and note["engine"] == "xgboost"
    backend = loaded(version_dir(tmp_path, export), export, "auto")
    fil, _, rest = backend.engine.partition("; ")
    assert fil in ("nvforest-cpu", "treelite-gtil")
    assert rest.startswith("xgboost-cpu from ") and rest.endswith(" rows"), backend.engine
    assert backend.batch_rows >= int(rest.split()[2])  # chunks no smaller than the crossover
    assert loaded(version_dir(tmp_path, export), export, "xgboost").batch_rows > 0


def test_a_forced_batch_engine_without_its_file_is_refused(tmp_path: Path) -> None:
    export, _, _ = exported("xgboost-binary")
    checkpoint_only = dataclasses.replace(
        export, files={k: v for k, v in export.files.items() if k not in ENGINE_FILES.values()}
    )
    folder = version_dir(tmp_path, checkpoint_only)
    with pytest.raises(
        BackendError, match=r"engine 'xgboost' reads engine\.xgboost\.ubj.*deploy the model again"
    ):
        loaded(folder, checkpoint_only, "xgboost")
    assert loaded(folder, checkpoint_only, "auto").engine in ("nvforest-cpu", "treelite-gtil")


def test_a_batch_engine_file_that_answers_differently_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of another model (a copy gone wrong) loads, but disagrees on generated rows: the
    version serves on FIL's engine alone, with a warning, and answers as its checkpoint does."""
    export, _, X = exported("sklearn-forest")
    other, _, _ = exported("lightgbm-binary")  # same features, another model: a valid ONNX file
    onnx = ENGINE_FILES["onnxruntime"]
    wrong = dataclasses.replace(export, files={**export.files, onnx: other.files[onnx]})
    with caplog.at_level(logging.WARNING, logger="tritonflow.serving.backends.forest_engines"):
        backend = loaded(version_dir(tmp_path, wrong), wrong, "auto")
    assert backend.engine in ("nvforest-cpu", "treelite-gtil")
    assert "answers differently from FIL's engine" in caplog.text
    np.testing.assert_allclose(served(backend, X[:1024]), export.native_predict(X[:1024]), atol=TOLERANCE)


def test_a_batch_engine_that_routes_missing_values_otherwise_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version published before missing values were routed as scikit-learn does: its checkpoint
    sends each NaN left (Treelite's importer alone), its batch engine as the model does. They agree
    on rows without NaN only: serving both would answer a row by the size of the batch it came in."""
    export, _, X = exported("sklearn-forest")
    trained, _, _ = model("sklearn-forest")
    old = {**export.files, "checkpoint.tl": treelite.sklearn.import_model(trained).serialize_bytes()}
    before = dataclasses.replace(export, files=old)
    with caplog.at_level(logging.WARNING, logger="tritonflow.serving.backends.forest_engines"):
        backend = loaded(version_dir(tmp_path, before), before, "auto")
    assert backend.engine in ("nvforest-cpu", "treelite-gtil")
    assert "answers differently from FIL's engine" in caplog.text


def test_a_batch_engine_file_that_cannot_load_leaves_fil_serving(tmp_path: Path) -> None:
    export, _, X = exported("xgboost-binary")
    folder = version_dir(tmp_path, export)
    (folder / ENGINE_FILES["xgboost"]).write_bytes(b"not an xgboost model")
    with pytest.raises(BackendError, match=r"xgboost cannot load .*engine\.xgboost\.ubj"):
        loaded(folder, export, "xgboost")
    backend = loaded(folder, export, "auto")
    assert backend.engine in ("nvforest-cpu", "treelite-gtil")
    np.testing.assert_allclose(served(backend, X[:100]), export.native_predict(X[:100]), atol=TOLERANCE)


# -- the choice, on engines of known cost ---------------------------------------------------------
def spinning(fixed_s: float, per_row_s: float, calls: list[int]) -> Engine:
    """An engine of known cost (a busy wait, not a sleep: exact at microseconds) answering x[:, :1]."""

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        until = time.perf_counter() + fixed_s + per_row_s * x.shape[0]
        while time.perf_counter() < until:
            pass
        return x[:, :1].copy()

    return Engine("spin", run)


def test_the_crossover_is_where_the_batch_engine_wins_from_then_on() -> None:
    """FIL's engine: 1 us a row; the batch engine: 300 us a call. At 256 rows the batch engine is
    slower (0.85x), at 1,024 rows 3.4x faster: one crossover at 1,024, and batches routed by rows."""
    fil_calls: list[int] = []
    batch_calls: list[int] = []
    fil = dataclasses.replace(spinning(0.0, 1e-6, fil_calls), name="fil-engine")
    batch = dataclasses.replace(spinning(3e-4, 0.0, batch_calls), name="batch-engine")
    chosen = fastest(fil, [batch], N_FEATURES)
    assert chosen.name == "fil-engine; batch-engine from 1024 rows"
    assert chosen.batch_rows == 4096  # the batcher's chunks: where the batch engine pays for its call
    fil_calls.clear(), batch_calls.clear()
    rows = np.ones((2000, N_FEATURES), dtype=np.float32)
    for n in (1, 1023, 1024, 2000):
        chosen.run(rows[:n])
    assert (fil_calls, batch_calls) == ([1, 1023], [1024, 2000])


def test_a_batch_engine_faster_everywhere_takes_every_batch_and_one_that_disagrees_none() -> None:
    calls: list[int] = []
    fil = dataclasses.replace(spinning(2e-4, 1e-6, calls), name="fil-engine")
    fast = dataclasses.replace(spinning(0.0, 0.0, calls), name="batch-engine")
    assert fastest(fil, [fast], N_FEATURES).name == "batch-engine"
    wrong = Engine("wrong", lambda x: x[:, 1:2] + 1.0)
    assert fastest(fil, [wrong], N_FEATURES) is fil


def test_a_slow_engine_is_timed_once_a_size_past_the_budget() -> None:
    """At 80 us a row, 1,024 and 4,096 rows take 82 and 328 ms a call: past SIZE_BUDGET_S, each
    such size gets its warm-up and one timed round; 256 rows (20 ms a call) keep every round."""
    calls: list[int] = []
    forest_engines._speeds([spinning(0.0, 8e-5, calls)], forest_engines._generated(N_FEATURES))
    per_size = {size: calls.count(size) for size in forest_engines.SIZES}
    assert per_size[1] == per_size[256] == 1 + forest_engines.ROUNDS
    assert per_size[1024] == per_size[4096] == 2
