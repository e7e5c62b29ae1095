"""The parity gate on real exports, served by the node's own backends (nvForest or GTIL, onnxruntime)."""

from __future__ import annotations

import dataclasses

import lightgbm as lgb
import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression

from tritonflow.plugin.exporters import export_model
from tritonflow.plugin.parity import ParityError, check_parity
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
