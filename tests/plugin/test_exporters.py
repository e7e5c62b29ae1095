"""Exporters on real models of every family: files, configs Triton accepts, errors that say what to do."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import onnx
import pytest
import treelite
import treelite.gtil
import xgboost as xgb
from sklearn.cluster import KMeans
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tritonflow.plugin.exporters import ExportError, config_spec, export_model
from tritonflow.serving.model_config import build_config, check_config, render

TRITON = "26.06"


def _check(export) -> None:
    """The config built from an export passes Triton's schema and the FIL rules."""
    spec = config_spec(export, "m", max_batch_size=64, instance_kind="gpu", max_queue_delay_us=50)
    config = check_config(render(build_config(spec)))
    assert config.max_batch_size == 64 and config.dynamic_batching.max_queue_delay_microseconds == 50


@pytest.mark.parametrize("fmt", ["auto", "onnx"])
def test_every_family_exports_a_valid_config(case, fmt):
    export = export_model(case.model, fmt, case.X.shape[1], TRITON)
    expected = case.auto_format if fmt == "auto" else "onnx"
    assert export.format == expected
    assert export.backend == {"treelite": "fil", "onnx": "onnxruntime"}[expected]
    assert list(export.files) == [{"treelite": "checkpoint.tl", "onnx": "model.onnx"}[expected]]
    assert [(t.name, t.datatype, t.dims) for t in export.inputs] == [("input__0", "FP32", (6,))]
    assert [(t.name, t.datatype, t.dims) for t in export.outputs] == [
        ("output__0", "FP32", (case.n_classes or 1,))
    ]
    assert export.n_classes == case.n_classes and export.n_features == 6
    assert export.native_predict(case.X[:5]).shape == (5, case.n_classes or 1)
    # the adapter reads the model as its library answers (the parity gate trusts it)
    np.testing.assert_allclose(export.native_predict(case.X), case.answer(case.X), rtol=1e-6, atol=1e-6)
    info = export.model_info
    assert {"class", "library", "library_version", "hyperparameters"} <= set(info)
    json.dumps(info, allow_nan=False)  # strict JSON, as the deployment record needs
    assert info["library"] in ("scikit-learn", "xgboost", "lightgbm")
    _check(export)


@pytest.mark.parametrize(
    ("triton", "key"), [("24.03", "output_class"), ("25.08", "output_class"), ("25.09", "is_classifier")]
)
def test_fil_parameters_follow_the_triton_release(triton, key):
    X, y = make_classification(200, 5, random_state=0)
    classifier = export_model(RandomForestClassifier(4).fit(X, y), "treelite", 5, triton)
    assert classifier.parameters == {
        "model_type": "treelite_checkpoint",
        key: "true",
        "predict_proba": "true",
        "threshold": "0.5",
    }
    assert classifier.outputs[0].dims == (2,)  # binary: FIL's predict_proba answers both columns
    regressor = export_model(RandomForestRegressor(4).fit(X, y * 1.5), "treelite", 5, triton)
    assert regressor.parameters == {
        "model_type": "treelite_checkpoint",
        key: "false",
        "predict_proba": "false",
    }
    assert regressor.outputs[0].dims == (1,)
    assert classifier.versions == {"treelite": treelite.__version__}


def test_treelite_checkpoint_reads_back():
    X, y = make_classification(200, 5, n_classes=3, n_informative=3, random_state=0)
    model = RandomForestClassifier(4, random_state=0).fit(X, y)
    export = export_model(model, "auto", 5, TRITON)
    checkpoint = treelite.Model.deserialize_bytes(export.files["checkpoint.tl"])
    assert checkpoint.num_tree == 4 and checkpoint.num_feature == 5


def test_onnx_graph_serves_one_plain_tensor(case):
    export = export_model(case.model, "onnx", case.X.shape[1], TRITON)
    graph = onnx.load_from_string(export.files["model.onnx"])
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["input__0"]
    assert [o.name for o in graph.graph.output] == ["output__0"]  # label pruned, probabilities renamed
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", case.n_classes or 1]
    assert "ZipMap" not in {node.op_type for node in graph.graph.node}
    assert all(o.version <= 15 for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    converter = "skl2onnx" if export.model_info["library"] == "scikit-learn" else "onnxmltools"
    assert set(export.versions) == {"onnx", converter, "onnx_opset"}


def _early_stopped_xgb() -> tuple[xgb.XGBClassifier, np.ndarray]:
    X, y = make_classification(600, 6, n_informative=4, n_classes=3, random_state=0)
    X = X.astype(np.float32)
    model = xgb.XGBClassifier(n_estimators=200, learning_rate=0.5, max_depth=3, early_stopping_rounds=3)
    model.fit(X[:300], y[:300], eval_set=[(X[300:], y[300:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()  # it did stop early
    return model, X


@pytest.mark.parametrize("raw_booster", [False, True])
def test_early_stopped_xgboost_is_cut_at_best_iteration(raw_booster):
    model, X = _early_stopped_xgb()
    export = export_model(model.get_booster() if raw_booster else model, "treelite", 6, TRITON)
    checkpoint = treelite.Model.deserialize_bytes(export.files["checkpoint.tl"])
    assert checkpoint.num_tree == (model.best_iteration + 1) * 3
    served = treelite.gtil.predict(checkpoint, X).reshape(len(X), 3)
    np.testing.assert_allclose(served, model.predict_proba(X), atol=1e-6)
    # every round exported would answer differently: the cut is what makes the export right
    uncut = treelite.gtil.predict(treelite.frontend.from_xgboost(model.get_booster()), X).reshape(len(X), 3)
    assert np.abs(uncut - model.predict_proba(X)).max() > 1e-3
    assert export.model_info["best_iteration"] == model.best_iteration


def test_early_stopped_lightgbm_booster_exports_best_iteration_only():
    X, y = make_classification(600, 6, n_informative=4, n_classes=3, random_state=0)
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "learning_rate": 0.5, "verbose": -1},
        lgb.Dataset(X[:300], y[:300]),
        200,
        valid_sets=[lgb.Dataset(X[300:], y[300:])],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        keep_training_booster=True,  # keeps the rounds after the best one in the Booster
    )
    assert booster.best_iteration < booster.current_iteration()
    export = export_model(booster, "treelite", 6, TRITON)
    checkpoint = treelite.Model.deserialize_bytes(export.files["checkpoint.tl"])
    assert checkpoint.num_tree == booster.best_iteration * 3
    assert export_model(booster, "onnx", 6, TRITON).format == "onnx"  # onnxmltools needs the cut too
    assert export.model_info["best_iteration"] == booster.best_iteration


def test_xgboost_trained_on_named_columns_converts_to_onnx():
    pd = pytest.importorskip("pandas")
    X, y = make_classification(200, 4, random_state=0)
    frame = pd.DataFrame(X, columns=["amount", "age", "hour", "score"])
    export = export_model(xgb.XGBClassifier(n_estimators=4).fit(frame, y), "onnx", 4, TRITON)
    assert export.native_predict(X[:3].astype(np.float32)).shape == (3, 2)


def test_multi_output_regressor_goes_to_onnx():
    X, y = make_classification(200, 5, random_state=0)
    model = RandomForestRegressor(4).fit(X, np.c_[y, -y])
    export = export_model(model, "auto", 5, TRITON)
    assert export.format == "onnx" and export.outputs[0].dims == (2,)
    with pytest.raises(ExportError, match='single-output only.*use format="onnx"'):
        export_model(model, "treelite", 5, TRITON)


@pytest.mark.parametrize("fmt", ["treelite", "onnx"])
def test_string_classes_are_listed_for_the_output_columns(fmt):
    X, y = make_classification(200, 5, n_classes=3, n_informative=3, random_state=0)
    labels = np.array(["fraud", "ok", "review"])[y]
    export = export_model(RandomForestClassifier(4).fit(X, labels), fmt, 5, TRITON)
    assert export.model_info["classes"] == ["fraud", "ok", "review"]
    assert export.outputs[0].datatype == "FP32"  # probabilities, never a string label tensor
    spec = config_spec(export, "m")
    assert spec.labels == ("fraud", "ok", "review")  # Triton's labels file, one class per column
    assert build_config(spec).output[0].label_filename == "labels.txt"


def test_numeric_classes_label_the_columns_and_regressors_have_none():
    X, y = make_classification(200, 5, random_state=0)
    binary = export_model(RandomForestClassifier(4).fit(X, y), "auto", 5, TRITON)
    assert config_spec(binary, "m").labels == ("0", "1")
    regressor = config_spec(export_model(RandomForestRegressor(4).fit(X, y * 1.5), "auto", 5, TRITON), "m")
    assert regressor.labels == () and build_config(regressor).output[0].label_filename == ""


def test_a_class_with_a_line_break_is_refused():
    X, y = make_classification(200, 5, random_state=0)
    export = export_model(
        RandomForestClassifier(4).fit(X, np.array(["ok", "not\r\nok"])[y]), "auto", 5, TRITON
    )
    with pytest.raises(ExportError, match=r"class 'not\\r\\nok' holds a line break.*one class per line"):
        config_spec(export, "m")


def test_unsupported_type_names_it_and_the_families():
    with pytest.raises(ExportError, match=r"builtins\.dict.*sklearn, xgboost, lightgbm"):
        export_model({"weights": [1, 2]}, "auto", 3, TRITON)


def test_treelite_on_a_linear_model_says_to_use_onnx():
    X, y = make_classification(100, 4, random_state=0)
    with pytest.raises(ExportError, match='LogisticRegression cannot be exported to Treelite.*format="onnx"'):
        export_model(LogisticRegression().fit(X, y), "treelite", 4, TRITON)


def test_treelite_on_a_pipeline_with_preprocessing_says_to_use_onnx():
    X, y = make_classification(100, 4, random_state=0)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(4)).fit(X, y)
    with pytest.raises(ExportError, match='Pipeline cannot be exported to Treelite.*format="onnx"'):
        export_model(model, "treelite", 4, TRITON)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda X, y: LinearSVC().fit(X, y), "LinearSVC has no predict_proba.*CalibratedClassifierCV"),
        (lambda X, y: KMeans(2, n_init=1).fit(X), "KMeans is neither a classifier nor a regressor"),
    ],
)
def test_models_without_a_served_output_are_refused(make, message):
    X, y = make_classification(100, 4, random_state=0)
    with pytest.raises(ExportError, match=message):
        export_model(make(X, y), "auto", 4, TRITON)


def test_unknown_format_and_wrong_width_are_refused():
    X, y = make_classification(100, 4, random_state=0)
    model = RandomForestClassifier(4).fit(X, y)
    with pytest.raises(ExportError, match="format 'pickle' is not one of auto, treelite, onnx"):
        export_model(model, "pickle", 4, TRITON)
    with pytest.raises(ExportError, match="does not predict on 7 features"):
        export_model(model, "auto", 7, TRITON)
