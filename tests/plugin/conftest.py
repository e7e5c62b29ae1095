"""Small trained models of every family the exporters take, trained once per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn import ensemble
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

TREES = 8


@dataclass(frozen=True)
class Case:
    """A fitted model, rows shaped like its training data, and the format "auto" must pick."""

    name: str
    model: Any
    X: np.ndarray
    auto_format: str
    n_classes: int | None  # None for regressors

    def answer(self, X: np.ndarray) -> np.ndarray:
        """The library's own answer, called directly: class probabilities, or values as a column."""
        if isinstance(self.model, xgb.Booster):
            return self.model.predict(xgb.DMatrix(X))  # multi:softprob: (rows, classes)
        if isinstance(self.model, lgb.Booster):
            scores = self.model.predict(X)  # binary: P(class 1) only
            return np.c_[1 - scores, scores] if scores.ndim == 1 else scores
        if self.n_classes:
            return self.model.predict_proba(X)
        return self.model.predict(X).reshape(len(X), -1)


def _data(task: str) -> tuple[np.ndarray, np.ndarray]:
    if task == "regression":
        X, y = make_regression(300, 6, noise=5.0, random_state=0)
        return X.astype(np.float32), y * 100  # values in the thousands: the relative rule matters
    n_classes = 2 if task == "binary" else 3
    X, y = make_classification(300, 6, n_informative=4, n_classes=n_classes, random_state=0)
    return X.astype(np.float32), y


def _xgb_booster(X: np.ndarray, y: np.ndarray) -> xgb.Booster:
    return xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 3}, xgb.DMatrix(X, y), TREES
    )


def _lgb_booster(X: np.ndarray, y: np.ndarray) -> lgb.Booster:
    return lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), TREES)


# name -> (task, an unfitted estimator or a function training a Booster, the format "auto" picks)
MODELS: dict[str, tuple[str, Any, str]] = {
    "rf-binary": ("binary", ensemble.RandomForestClassifier(TREES, max_depth=4, random_state=0), "treelite"),
    "rf-multiclass": ("multiclass", ensemble.RandomForestClassifier(TREES, random_state=0), "treelite"),
    "rf-regression": ("regression", ensemble.RandomForestRegressor(TREES, random_state=0), "treelite"),
    "et-binary": ("binary", ensemble.ExtraTreesClassifier(TREES, random_state=0), "treelite"),
    "et-regression": ("regression", ensemble.ExtraTreesRegressor(TREES, random_state=0), "treelite"),
    "gb-binary": ("binary", ensemble.GradientBoostingClassifier(n_estimators=TREES), "treelite"),
    "gb-multiclass": ("multiclass", ensemble.GradientBoostingClassifier(n_estimators=TREES), "treelite"),
    "gb-regression": ("regression", ensemble.GradientBoostingRegressor(n_estimators=TREES), "treelite"),
    "hgb-binary": ("binary", ensemble.HistGradientBoostingClassifier(max_iter=TREES), "treelite"),
    "hgb-multiclass": ("multiclass", ensemble.HistGradientBoostingClassifier(max_iter=TREES), "treelite"),
    "hgb-regression": ("regression", ensemble.HistGradientBoostingRegressor(max_iter=TREES), "treelite"),
    "xgb-binary": ("binary", xgb.XGBClassifier(n_estimators=TREES, max_depth=3), "treelite"),
    "xgb-multiclass": ("multiclass", xgb.XGBClassifier(n_estimators=TREES, max_depth=3), "treelite"),
    "xgb-regression": ("regression", xgb.XGBRegressor(n_estimators=TREES, max_depth=3), "treelite"),
    "xgb-booster": ("multiclass", _xgb_booster, "treelite"),
    "lgb-binary": ("binary", lgb.LGBMClassifier(n_estimators=TREES, verbose=-1), "treelite"),
    "lgb-multiclass": ("multiclass", lgb.LGBMClassifier(n_estimators=TREES, verbose=-1), "treelite"),
    "lgb-regression": ("regression", lgb.LGBMRegressor(n_estimators=TREES, verbose=-1), "treelite"),
    "lgb-booster": ("binary", _lgb_booster, "treelite"),
    "logreg-multiclass": ("multiclass", LogisticRegression(max_iter=500), "onnx"),
    "ridge-regression": ("regression", Ridge(), "onnx"),
    "pipeline-scaler-logreg": ("binary", make_pipeline(StandardScaler(), LogisticRegression()), "onnx"),
    # an imputer is exact on complete rows, so the trees behind it keep parity in float32
    "pipeline-imputer-rf": (
        "multiclass",
        make_pipeline(SimpleImputer(), ensemble.RandomForestClassifier(TREES)),
        "onnx",
    ),
    "pipeline-imputer-xgb": (
        "binary",
        make_pipeline(SimpleImputer(), xgb.XGBClassifier(n_estimators=TREES)),
        "onnx",
    ),
    "pipeline-imputer-lgb-regression": (
        "regression",
        make_pipeline(SimpleImputer(), lgb.LGBMRegressor(n_estimators=TREES, verbose=-1)),
        "onnx",
    ),
    "pipeline-passthrough-rf": (
        "binary",
        Pipeline([("pre", "passthrough"), ("rf", ensemble.RandomForestClassifier(TREES))]),
        "treelite",
    ),
}


def _train(name: str) -> Case:
    task, spec, auto_format = MODELS[name]
    X, y = _data(task)
    model = spec(X, y) if isinstance(spec, Callable) else clone(spec).fit(X, y)
    n_classes = None if task == "regression" else len(np.unique(y))
    return Case(name, model, X, auto_format, n_classes)


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Train and predict on one OpenMP thread: the models are tiny, and spinning threads of
    xgboost, lightgbm and scikit-learn slow these tests tenfold on a busy machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session", params=sorted(MODELS))
def case(request: pytest.FixtureRequest) -> Case:
    """Every model family in turn (the whole table is ~25 small models, trained once per session)."""
    return _train(request.param)
