"""The parity gate on real exports, served by the node's own backends (nvForest or GTIL, onnxruntime)."""

from __future__ import annotations

import dataclasses

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    BaggingClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from tritonflow.plugin.exporters import export_model
from tritonflow.plugin.exporters.tabular import export_ensemble
from tritonflow.plugin.parity import ParityError, check_ensemble_parity, check_parity, missing_value_frame
from tritonflow.plugin.signature import describe

TRITON = "26.06"


@pytest.mark.parametrize("fmt", ["auto", "onnx"])
def test_every_family_answers_as_the_trained_model(case, fmt):
    export = export_model(case.model, fmt, case.X.shape[1], TRITON)
    for rows in (case.X, describe(case.model).rows):  # training-like rows, then generated ones
        report = check_parity(export, rows)  # raises ParityError past tolerance
        assert report["rows"] == len(rows) and report["tolerance"] == 1e-5
        assert report["rule"].startswith("absolute" if case.n_classes else "relative")
        assert report["engine"].startswith("nvforest" if export.format == "treelite" else "onnxruntime")
    # the served answers against the library's own predict_proba/predict, not only the adapter's
    check_parity(dataclasses.replace(export, native_predict=case.answer), case.X)


def _perturbed(export, by: float):
    native = export.native_predict

    def predict(rows: np.ndarray) -> np.ndarray:
        out = native(rows).copy()
        out[7, 0] += by
        return out

    return dataclasses.replace(export, native_predict=predict)


@pytest.mark.parametrize("fmt", ["treelite", "onnx"])
def test_a_difference_past_tolerance_is_refused_with_its_row(fmt):
    X, y = make_classification(200, 5, random_state=0)
    export = export_model(RandomForestClassifier(4, random_state=0).fit(X, y), fmt, 5, TRITON)
    message = r"^parity check failed: .* at row 7, output 0 .*absolute tolerance 1e-05, 200 rows compared"
    with pytest.raises(ParityError, match=message) as caught:
        check_parity(_perturbed(export, 1e-3), X.astype(np.float32))
    assert f'try format="{"onnx" if fmt == "treelite" else "treelite"}"' in str(caught.value)
    check_parity(_perturbed(export, 5e-6), X.astype(np.float32))  # within tolerance


class ShiftedForest(RandomForestClassifier):
    """A user's forest that post-processes its trees' answer: the checkpoint holds only the trees."""

    def predict_proba(self, X):
        return np.clip(super().predict_proba(X) + 0.05, 0, 1)


def test_a_subclass_that_changes_the_answer_is_caught():
    X, y = make_classification(200, 5, random_state=0)
    export = export_model(ShiftedForest(4, random_state=0).fit(X, y), "auto", 5, TRITON)
    assert export.format == "treelite"  # a forest by its base class
    with pytest.raises(ParityError, match=r"largest difference 0\.05 .*try format=\"onnx\""):
        check_parity(export, X.astype(np.float32))


def test_regressors_are_compared_relative_to_their_scale():
    X, y = make_regression(200, 5, random_state=0)
    model = RandomForestRegressor(4, random_state=0).fit(X, y * 1e6)  # values ~1e8: float32 keeps ~7 digits
    export = export_model(model, "treelite", 5, TRITON)
    rows = X.astype(np.float32)
    report = check_parity(export, rows)
    assert report["max_abs_diff"] > 1e-5  # an absolute rule would refuse this faithful export
    scale = float(np.abs(export.native_predict(rows)).max())  # the output's range on these rows
    check_parity(_perturbed(export, 5e-6 * scale), rows)
    with pytest.raises(ParityError, match="at row 7.*relative to max"):
        check_parity(_perturbed(export, 5e-5 * scale), rows)


def test_a_wrong_output_shape_is_refused():
    X, y = make_regression(100, 3, random_state=0)
    export = export_model(LinearRegression().fit(X, y), "onnx", 3, TRITON)
    wide = dataclasses.replace(export, native_predict=lambda rows: np.zeros((len(rows), 2), np.float32))
    with pytest.raises(ParityError, match=r"answers with shape \[100, 1\], the model with \[100, 2\]"):
        check_parity(wide, X.astype(np.float32))


def test_missing_values_answered_alike_pass():
    X, y = make_classification(200, 5, random_state=0)
    X[::3, 1] = np.nan  # trees route missing values; both sides must agree
    model = lgb.LGBMClassifier(n_estimators=8, verbose=-1).fit(X, y)
    for fmt in ("treelite", "onnx"):
        assert check_parity(export_model(model, fmt, 5, TRITON), X.astype(np.float32))["max_abs_diff"] < 1e-5


def _with_nan(X: np.ndarray, share: float = 0.2) -> np.ndarray:
    X = X.copy()
    X[np.random.default_rng(0).random(X.shape) < share] = np.nan
    return X


@pytest.mark.parametrize(
    "model, fmt, trained_with_nan",
    [
        (RandomForestClassifier(12, max_depth=6, random_state=0), "treelite", True),
        (RandomForestClassifier(12, max_depth=6, random_state=0), "treelite", False),  # the larger child
        (RandomForestRegressor(12, max_depth=6, random_state=0), "treelite", True),
        (ExtraTreesClassifier(12, max_depth=6, random_state=0), "treelite", True),
        (RandomForestClassifier(12, max_depth=6, random_state=0), "onnx", True),
        (DecisionTreeRegressor(max_depth=6, random_state=0), "onnx", True),
        (
            BaggingClassifier(DecisionTreeClassifier(max_depth=5), max_features=0.5, random_state=0),
            "onnx",
            True,
        ),
        (
            make_pipeline(StandardScaler(), ExtraTreesClassifier(12, max_depth=6, random_state=0)),
            "onnx",
            True,
        ),
    ],
    ids=lambda p: type(p).__name__ if not isinstance(p, str | bool) else str(p),
)
def test_scikit_learn_trees_send_a_missing_value_the_side_they_learned(model, fmt, trained_with_nan):
    # Treelite's importer sent every missing value left and skl2onnx every one right: off by up to 1.0
    X, y = make_classification(600, 6, n_informative=4, random_state=0)
    y = y if hasattr(model, "predict_proba") else X[:, 0] * 3 + X[:, 1]
    model.fit(_with_nan(X) if trained_with_nan else X, y)
    export = export_model(model, fmt, 6, TRITON)
    rows = X[:200].astype(np.float32)  # a sample without NaN: the gate adds rows with one
    native = model.predict_proba if hasattr(model, "predict_proba") else lambda r: model.predict(r)[:, None]
    report = check_parity(dataclasses.replace(export, native_predict=native), rows)
    assert report["missing_value_rows"] == 201 and report["max_abs_diff"] < 1e-5


def test_an_export_that_answers_otherwise_on_missing_values_is_refused():
    X, y = make_classification(200, 5, random_state=0)
    export = export_model(RandomForestClassifier(4, random_state=0).fit(X, y), "treelite", 5, TRITON)
    native = export.native_predict

    def nan_elsewhere(rows: np.ndarray) -> np.ndarray:
        out = native(rows).copy()
        out[np.isnan(rows).any(axis=1), 0] += 0.1
        return out

    message = r"model on the sample's rows with a missing value \(NaN\), row i missing feature i % 5: largest"
    with pytest.raises(ParityError, match=message + r" difference 0\.1 at row \d+, output 0 .* 201 rows"):
        check_parity(dataclasses.replace(export, native_predict=nan_elsewhere), X.astype(np.float32))


def test_a_model_that_refuses_missing_values_is_not_sent_one():
    X, y = make_classification(200, 5, random_state=0)
    export = export_model(GradientBoostingClassifier(n_estimators=5).fit(X, y), "treelite", 5, TRITON)
    report = check_parity(export, X.astype(np.float32))  # its predict_proba raises on NaN
    assert report["missing_value_rows"] == 0 and report["rows"] == 200

    def strict(rows: np.ndarray) -> np.ndarray:  # a user's step that fails its own way on NaN
        if np.isnan(rows).any():
            raise RuntimeError("no missing values here")
        return export.native_predict(rows)

    report = check_parity(dataclasses.replace(export, native_predict=strict), X.astype(np.float32))
    assert report["missing_value_rows"] == 0


def test_an_ensemble_is_sent_missing_values_in_its_float_columns():
    # a DataFrame pipeline: one-hot strings and passed-through floats, a forest trained with NaN in them
    rng = np.random.default_rng(0)
    numbers = {f"x{j}": rng.normal(size=500) for j in range(3)}
    frame = pd.DataFrame({"shop": rng.choice(["a", "b", "c"], 500), **numbers})
    y = ((frame.shop == "b") | (frame.x0 > 0.5)).to_numpy(int)
    train = frame.copy()
    train.loc[::4, "x0"] = np.nan
    prep = ColumnTransformer([("shop", OneHotEncoder(), ["shop"])], remainder="passthrough")
    pipe = make_pipeline(prep, RandomForestClassifier(12, max_depth=6, random_state=0)).fit(train, y)
    export = export_ensemble(pipe, frame.head(200), TRITON)
    report = check_ensemble_parity(export, frame.head(200))  # a sample without NaN
    assert report["missing_value_rows"] == 201 and report["max_abs_diff"] < 1e-5
    assert missing_value_frame(frame[["shop"]]) is None  # no float column: nothing goes missing
