"""The runtimes against the libraries that trained the models: same answers, Triton's semantics.

Every model is small and trained here; every config goes through build_config -> render ->
check_config, as a published repository would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import treelite
import xgboost as xgb
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)

from tritonflow.serving.backends import BackendError, forest, load_backend
from tritonflow.serving.model_config import (
    ConfigSpec,
    ModelConfig,
    TensorSpec,
    build_config,
    check_config,
    parse_config,
    render,
)

N_FEATURES = 6
HAS_NVFOREST = isinstance(forest.nvforest_or_reason(), ModuleType)
ENGINES = [
    "treelite",
    pytest.param("nvforest", marks=pytest.mark.skipif(not HAS_NVFOREST, reason="nvForest not installed")),
]
PROBA_ATOL = 1e-5


# -- data, models, repositories -----------------------------------------------------------------
def _data(task: str) -> tuple[np.ndarray, np.ndarray]:
    if task == "regression":
        X, y = make_regression(400, N_FEATURES, noise=5.0, random_state=0)
    else:
        classes = 2 if task == "binary" else 3
        X, y = make_classification(
            400, N_FEATURES, n_informative=4, n_classes=classes, n_clusters_per_class=1, random_state=0
        )
    return X.astype(np.float32), y


DATA = {task: _data(task) for task in ("binary", "multiclass", "regression")}
WIDTH = {"binary": 2, "multiclass": 3, "regression": 1}  # values per row with predict_proba


def _sklearn(est: Any) -> tuple[Any, treelite.Model]:
    return est, treelite.sklearn.import_model(est)


def _xgboost(est: Any) -> tuple[Any, treelite.Model]:
    return est, treelite.frontend.from_xgboost(est.get_booster())


def _lightgbm(est: Any) -> tuple[Any, treelite.Model]:
    return est, treelite.frontend.from_lightgbm(est.booster_)


FAMILIES: dict[str, Callable[[str], tuple[Any, treelite.Model]]] = {
    "rf": lambda task: _sklearn(
        (RandomForestRegressor if task == "regression" else RandomForestClassifier)(
            n_estimators=10, max_depth=5, random_state=0
        ).fit(*DATA[task])
    ),
    "hgb": lambda task: _sklearn(
        (HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier)(
            max_iter=15, random_state=0
        ).fit(*DATA[task])
    ),
    "xgb": lambda task: _xgboost(
        (xgb.XGBRegressor if task == "regression" else xgb.XGBClassifier)(n_estimators=15, max_depth=4).fit(
            *DATA[task]
        )
    ),
    "lgb": lambda task: _lightgbm(
        (lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier)(
            n_estimators=15, num_leaves=8, verbose=-1
        ).fit(*DATA[task])
    ),
}
CASES = [(family, task) for family in FAMILIES for task in DATA]


@pytest.fixture(scope="module")
def trained() -> Callable[[str, str], tuple[Any, treelite.Model]]:
    cache: dict[tuple[str, str], tuple[Any, treelite.Model]] = {}

    def get(family: str, task: str) -> tuple[Any, treelite.Model]:
        if (family, task) not in cache:
            cache[family, task] = FAMILIES[family](task)
        return cache[family, task]

    return get


def fil_config(
    out_dims: int,
    *,
    n_features: int = N_FEATURES,
    model_type: str = "treelite_checkpoint",
    classifier: bool = True,
    predict_proba: bool = True,
    threshold: str = "0.5",
    classifier_key: str = "is_classifier",
    kind: str = "cpu",
    model_file: str = "",
    checked: bool = True,
) -> ModelConfig:
    params = {"model_type": model_type, classifier_key: str(classifier).lower(), "threshold": threshold}
    if classifier:
        params["predict_proba"] = str(predict_proba).lower()
    spec = ConfigSpec(
        name="model",
        backend="fil",
        inputs=(TensorSpec("input__0", "FP32", (n_features,)),),
        outputs=(TensorSpec("output__0", "FP32", (out_dims,)),),
        instance_kind=kind,
        parameters=params,
    )
    config = build_config(spec)
    config.default_model_filename = model_file
    # what a server reads back from config.pbtxt; unchecked: what a backend must still guard against
    return (check_config if checked else parse_config)(render(config))


def version_dir(tmp_path: Path, model: treelite.Model | None = None, name: str = "checkpoint.tl") -> Path:
    folder = tmp_path / "model" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        model.serialize(str(folder / name))
    return folder


def predict(backend: Any, X: np.ndarray) -> np.ndarray:
    out = backend.predict({"input__0": X})["output__0"]
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[0] == len(X)
    return out


# -- Triton's FIL semantics, every family, both engines ----------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("family", "task"), CASES)
def test_checkpoint_matches_the_native_model(tmp_path, trained, family, task, engine):
    est, model = trained(family, task)
    X = DATA[task][0]
    if task == "regression":
        backend = load_backend(version_dir(tmp_path, model), fil_config(1, classifier=False), engine)
        out = predict(backend, X)
        assert out.shape == (len(X), 1)
        np.testing.assert_allclose(out[:, 0], est.predict(X), rtol=1e-5, atol=1e-4)
    else:
        expected = est.predict_proba(X)
        backend = load_backend(version_dir(tmp_path, model), fil_config(expected.shape[1]), engine)
        np.testing.assert_allclose(predict(backend, X), expected, atol=PROBA_ATOL)
    assert backend.engine == {"treelite": "treelite-gtil", "nvforest": "nvforest-cpu"}[engine]


def class_output(
    tmp_path: Path, trained: Any, family: str, task: str, engine: str, threshold: str = "0.5"
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A classifier served for class output (predict_proba "false"): the estimator, X, the answers."""
    est, model = trained(family, task)
    X = DATA[task][0]
    config = fil_config(1, predict_proba=False, threshold=threshold)
    return est, X, predict(load_backend(version_dir(tmp_path, model), config, engine), X)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("family", "task"), [c for c in CASES if c[1] != "regression"])
def test_class_output_is_the_native_class(tmp_path, trained, family, task, engine):
    est, X, out = class_output(tmp_path, trained, family, task, engine)
    assert out.shape == (len(X), 1)
    np.testing.assert_array_equal(out[:, 0], est.predict(X).astype(np.float32))


@pytest.mark.parametrize("engine", ENGINES)
def test_threshold_applies_to_single_score_binary_models(tmp_path, trained, engine):
    est, X, out = class_output(tmp_path, trained, "xgb", "binary", engine, threshold="0.8")
    expected = (est.predict_proba(X)[:, 1] > 0.8).astype(np.float32)
    np.testing.assert_array_equal(out[:, 0], expected)
    assert 0 < expected.sum() < (est.predict(X) == 1).sum()  # the threshold changed some answers


@pytest.mark.parametrize("engine", ENGINES)
def test_two_column_binary_models_answer_the_argmax_as_triton_does(tmp_path, trained, engine):
    # Triton's FIL backend takes the argmax when the model gives one score per class (RF),
    # whatever the threshold: the same repository must answer the same here.
    est, X, out = class_output(tmp_path, trained, "rf", "binary", engine, threshold="0.9")
    np.testing.assert_array_equal(out[:, 0], est.predict(X).astype(np.float32))


def test_legacy_output_class_is_understood(tmp_path, trained):
    est, model = trained("hgb", "binary")
    X = DATA["binary"][0]
    config = fil_config(2, classifier_key="output_class")
    np.testing.assert_allclose(
        predict(load_backend(version_dir(tmp_path, model), config), X), est.predict_proba(X), atol=PROBA_ATOL
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("model_type", "family", "file_name"),
    [
        ("xgboost_json", "xgb", "xgboost.json"),
        ("xgboost_ubj", "xgb", "xgboost.ubj"),
        ("lightgbm", "lgb", "model.txt"),
    ],
)
def test_native_model_files_load(tmp_path, trained, model_type, family, file_name, engine):
    est, _ = trained(family, "multiclass")
    X = DATA["multiclass"][0]
    folder = version_dir(tmp_path)
    booster = est.get_booster() if family == "xgb" else est.booster_
    booster.save_model(str(folder / file_name))
    backend = load_backend(folder, fil_config(3, model_type=model_type), engine)
    np.testing.assert_allclose(predict(backend, X), est.predict_proba(X), atol=PROBA_ATOL)


def test_default_model_filename_overrides_the_file_name(tmp_path, trained):
    est, model = trained("rf", "multiclass")
    folder = version_dir(tmp_path, model, name="forest.tl")
    backend = load_backend(folder, fil_config(3, model_file="forest.tl"))
    X = DATA["multiclass"][0]
    np.testing.assert_allclose(predict(backend, X), est.predict_proba(X), atol=PROBA_ATOL)


@pytest.mark.skipif(not HAS_NVFOREST, reason="nvForest not installed")
@pytest.mark.parametrize(("family", "task"), CASES)
def test_engines_agree(tmp_path, trained, family, task):
    _, model = trained(family, task)
    X = DATA[task][0]
    width = WIDTH[task]
    config = fil_config(width, classifier=task != "regression")
    folder = version_dir(tmp_path, model)
    gtil = predict(load_backend(folder, config, "treelite"), X)
    nvforest = predict(load_backend(folder, config, "nvforest"), X)
    np.testing.assert_allclose(nvforest, gtil, rtol=1e-5, atol=PROBA_ATOL)


# -- engine choice ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_auto_picks_nvforest_when_importable_and_the_gpu_only_when_visible(tmp_path, trained, kind):
    _, model = trained("rf", "binary")
    backend = load_backend(version_dir(tmp_path, model), fil_config(2, kind=kind))
    if not HAS_NVFOREST:
        assert backend.engine == "treelite-gtil"
    elif kind == "gpu" and forest.cuda_device_count() > 0:
        assert backend.engine == "nvforest-gpu"
    else:
        assert backend.engine == "nvforest-cpu"


@pytest.fixture
def without_nvforest(monkeypatch: pytest.MonkeyPatch):
    """nvForest made unimportable (a None entry in sys.modules), as on a base install."""
    forest.nvforest_or_reason.cache_clear()
    monkeypatch.setitem(sys.modules, "nvforest", None)
    yield
    forest.nvforest_or_reason.cache_clear()


def test_without_nvforest_auto_falls_back_to_gtil(tmp_path, trained, without_nvforest):
    _, model = trained("rf", "binary")
    assert load_backend(version_dir(tmp_path, model), fil_config(2)).engine == "treelite-gtil"


def test_without_nvforest_asking_for_it_says_how_to_install(tmp_path, trained, without_nvforest):
    _, model = trained("rf", "binary")
    with pytest.raises(BackendError, match=r"pip install 'tritonflow\[gpu\]'"):
        load_backend(version_dir(tmp_path, model), fil_config(2), "nvforest")


def test_unknown_engine_is_refused(tmp_path, trained):
    _, model = trained("rf", "binary")
    with pytest.raises(BackendError, match="auto, fil, nvforest, treelite, xgboost, onnxruntime"):
        load_backend(version_dir(tmp_path, model), fil_config(2), "cuml")


@pytest.mark.skipif(not HAS_NVFOREST, reason="nvForest not installed")
def test_nvforest_runs_small_batches_on_one_thread(tmp_path, trained):
    # One row on every core waits on the slowest thread: 7 us became 16 ms next to one busy process.
    import libnvforest

    assert forest._nvforest_threads() is not None, "nvForest's OpenMP runtime is out of reach"
    _, model = trained("rf", "binary")
    backend = load_backend(version_dir(tmp_path, model), fil_config(2), "nvforest")
    get_threads = libnvforest.load_library().omp_get_max_threads

    def threads_after(rows: int) -> int:
        predict(backend, np.zeros((rows, N_FEATURES), np.float32))
        return get_threads()

    with ThreadPoolExecutor(1) as worker:  # the ICV is per thread: keep this one's out of the suite's
        assert worker.submit(threads_after, 1).result() == 1
        trees = model.num_tree
        small = forest.TREE_ROWS_PER_THREAD // trees - 1  # just under one thread's worth of work
        assert worker.submit(threads_after, small).result() == 1
        big = 4 * forest.TREE_ROWS_PER_THREAD // trees
        assert worker.submit(threads_after, big).result() == forest.threads_for(big, trees)
        assert forest.threads_for(big, trees) == min(5, forest.CORES)


# -- inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_any_float_layout_gives_the_same_answer_and_empty_batches_work(tmp_path, trained, engine):
    _, model = trained("lgb", "multiclass")
    backend = load_backend(version_dir(tmp_path, model), fil_config(3), engine)
    X = DATA["multiclass"][0][:50]
    reference = predict(backend, X)
    wide = np.zeros((50, 2 * N_FEATURES))
    wide[:, ::2] = X
    np.testing.assert_array_equal(predict(backend, wide[:, ::2]), reference)  # float64, strided
    np.testing.assert_array_equal(predict(backend, np.asfortranarray(X)), reference)
    assert predict(backend, X[:0]).shape == (0, 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_with_the_wrong_feature_count_is_refused(tmp_path, trained, engine):
    _, model = trained("rf", "binary")
    backend = load_backend(version_dir(tmp_path, model), fil_config(2), engine)
    with pytest.raises(BackendError, match=r"\(rows, 6\) FP32, got shape \[3, 5\]"):
        backend.predict({"input__0": np.zeros((3, 5), np.float32)})


# -- load errors name the file and both sides ---------------------------------------------------
def test_missing_file_lists_the_folder(tmp_path):
    folder = version_dir(tmp_path)
    (folder / "deployment.json").write_text("{}")
    with pytest.raises(BackendError, match=r"checkpoint\.tl is missing .*\['deployment\.json'\]"):
        load_backend(folder, fil_config(2))


@pytest.mark.parametrize(
    ("model_type", "file_name"),
    [
        ("treelite_checkpoint", "checkpoint.tl"),
        ("xgboost_json", "xgboost.json"),
        ("xgboost_ubj", "xgboost.ubj"),
        ("xgboost", "xgboost.model"),
        ("lightgbm", "model.txt"),
    ],
)
def test_a_corrupt_file_is_a_backend_error_with_its_path(tmp_path, model_type, file_name):
    folder = version_dir(tmp_path)
    (folder / file_name).write_bytes(b"not a model at all" * 4)
    with pytest.raises(BackendError) as caught:
        load_backend(folder, fil_config(2, model_type=model_type))
    message = str(caught.value)
    assert str(folder / file_name) in message and model_type in message
    assert "/project/" not in message  # Treelite's source locations are stripped


def test_a_truncated_checkpoint_is_a_backend_error(tmp_path, trained):
    _, model = trained("rf", "binary")
    folder = version_dir(tmp_path)
    data = model.serialize_bytes()
    (folder / "checkpoint.tl").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="cannot read"):
        load_backend(folder, fil_config(2))


def test_an_unchecked_config_without_model_type_is_a_backend_error(tmp_path, trained):
    _, model = trained("rf", "binary")
    config = fil_config(2)
    del config.parameters["model_type"]
    with pytest.raises(BackendError, match="check-config"):
        load_backend(version_dir(tmp_path, model), config)


def test_feature_count_mismatch_names_file_config_and_model(tmp_path, trained):
    _, model = trained("rf", "binary")
    with pytest.raises(BackendError) as caught:
        load_backend(version_dir(tmp_path, model), fil_config(2, n_features=30))
    message = str(caught.value)
    assert "checkpoint.tl" in message and "dims [30]" in message and "reads 6 features" in message


@pytest.mark.parametrize(
    ("family", "task", "config_args", "match"),
    [
        ("rf", "binary", {"out_dims": 3}, r"dims \[3\], the model gives \[2\]"),
        ("xgb", "multiclass", {"out_dims": 2}, r"dims \[2\], the model gives \[3\]"),
        (
            "xgb",
            "multiclass",
            {"out_dims": 3, "predict_proba": False, "checked": False},
            r"dims \[3\], the model gives \[1\]",
        ),
        ("rf", "multiclass", {"out_dims": 1, "classifier": False}, 'set is_classifier "true"'),
    ],
)
def test_output_width_mismatch_is_refused(tmp_path, trained, family, task, config_args, match):
    _, model = trained(family, task)
    config_args = dict(config_args)
    with pytest.raises(BackendError, match=match):
        load_backend(version_dir(tmp_path, model), fil_config(config_args.pop("out_dims"), **config_args))


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_NVFOREST or forest.cuda_device_count() == 0, reason="needs nvForest and a CUDA GPU"
)
@pytest.mark.parametrize(("family", "task"), [("rf", "binary"), ("xgb", "multiclass"), ("lgb", "regression")])
def test_kind_gpu_runs_nvforest_on_the_gpu_with_the_same_answers(tmp_path, trained, family, task):
    _, model = trained(family, task)
    X = DATA[task][0]
    width = WIDTH[task]
    folder = version_dir(tmp_path, model)
    gpu = load_backend(folder, fil_config(width, classifier=task != "regression", kind="gpu"), "nvforest")
    assert gpu.engine == "nvforest-gpu"
    gtil = predict(load_backend(folder, fil_config(width, classifier=task != "regression"), "treelite"), X)
    np.testing.assert_allclose(predict(gpu, X), gtil, rtol=1e-5, atol=PROBA_ATOL)
    gpu.unload()


# -- ONNX ---------------------------------------------------------------------------------------
def onnx_config(outputs: tuple[TensorSpec, ...], *, platform: bool = False) -> ModelConfig:
    spec = ConfigSpec(
        name="model",
        backend="onnxruntime",
        inputs=(TensorSpec("float_input", "FP32", (N_FEATURES,)),),
        outputs=outputs,
    )
    config = build_config(spec)
    if platform:
        config.backend, config.platform = "", "onnxruntime_onnx"
    return check_config(render(config))


SKL2ONNX_OUTPUTS = (TensorSpec("label", "INT64", (1,)), TensorSpec("probabilities", "FP32", (3,)))


@pytest.fixture(scope="module")
def onnx_model(trained) -> tuple[Any, bytes]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est, _ = trained("rf", "multiclass")
    onx = convert_sklearn(
        est, initial_types=[("float_input", FloatTensorType([None, N_FEATURES]))], options={"zipmap": False}
    )
    return est, onx.SerializeToString()


@pytest.mark.parametrize("platform", [False, True])
def test_onnx_returns_every_output_and_labels_as_columns(tmp_path, onnx_model, platform):
    est, data = onnx_model
    folder = version_dir(tmp_path)
    (folder / "model.onnx").write_bytes(data)
    backend = load_backend(folder, onnx_config(SKL2ONNX_OUTPUTS, platform=platform))
    assert backend.engine == "onnxruntime-cpu"
    X = DATA["multiclass"][0]
    out = backend.predict({"float_input": X})
    assert set(out) == {"label", "probabilities"}
    assert out["label"].shape == (len(X), 1) and out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"][:, 0], est.predict(X))
    np.testing.assert_allclose(out["probabilities"], est.predict_proba(X), atol=PROBA_ATOL)
    assert backend.predict({"float_input": X[:0]})["label"].shape == (0, 1)


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ((TensorSpec("proba", "FP32", (3,)),), r"no output 'proba'.*\['label', 'probabilities'\]"),
        ((TensorSpec("probabilities", "FP64", (3,)),), "FP64 in the config, tensor\\(float\\) in the model"),
        ((TensorSpec("probabilities", "FP32", (2,)),), r"dims \[2\] in the config"),
    ],
)
def test_onnx_config_mismatch_is_refused(tmp_path, onnx_model, outputs, match):
    folder = version_dir(tmp_path)
    (folder / "model.onnx").write_bytes(onnx_model[1])
    with pytest.raises(BackendError, match=match):
        load_backend(folder, onnx_config(outputs))


def test_onnx_corrupt_or_missing_file_is_a_backend_error(tmp_path):
    folder = version_dir(tmp_path)
    with pytest.raises(BackendError, match="model.onnx is missing"):
        load_backend(folder, onnx_config(SKL2ONNX_OUTPUTS))
    (folder / "model.onnx").write_bytes(b"garbage" * 10)
    with pytest.raises(BackendError, match="onnxruntime cannot load .*model.onnx"):
        load_backend(folder, onnx_config(SKL2ONNX_OUTPUTS))


def test_onnx_wrong_batch_is_a_backend_error(tmp_path, onnx_model):
    folder = version_dir(tmp_path)
    (folder / "model.onnx").write_bytes(onnx_model[1])
    backend = load_backend(folder, onnx_config(SKL2ONNX_OUTPUTS))
    with pytest.raises(BackendError, match="refused the batch"):
        backend.predict({"float_input": np.zeros((2, N_FEATURES + 1), np.float32)})
