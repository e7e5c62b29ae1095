"""Models @deploy cannot serve are refused with one line that names the problem, and publish nothing.

Each case goes through the whole deploy path (`publish.deploy`: signature, export, config, parity,
repository), as the decorator calls it: whatever fails inside a library must come out as one
TritonflowError naming the model, never as the library's own exception (Metaflow's "Internal error").
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.exporters import export_model
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.triton_releases import NEWEST_TRITON

X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


def refused(model, tmp_path, sample=X) -> str:
    """Deploy `model` to a new repository; return the one-line refusal, once sure nothing was written."""
    repository = tmp_path / "repo"
    options = parse_options({"name": "m", "repository": str(repository)}, "CheckFlow", is_join=False)
    with pytest.raises(TritonflowError) as caught:
        deploy(model, options, sample, Provenance(metaflow={}))
    assert not repository.exists()  # the repository folder is made by the first publish
    message = str(caught.value)
    assert "\n" not in message, message
    return message


UNFITTED = {
    "sklearn-forest": RandomForestClassifier(4),
    "sklearn-linear": LogisticRegression(),
    "sklearn-pipeline": make_pipeline(StandardScaler(), RandomForestClassifier(4)),
    "sklearn-passthrough-pipeline": Pipeline([("pre", "passthrough"), ("rf", RandomForestRegressor(4))]),
    "xgboost-wrapper": xgb.XGBClassifier(n_estimators=4),
    "xgboost-regressor": xgb.XGBRegressor(n_estimators=4),
    "xgboost-booster": xgb.Booster(),
    "lightgbm-wrapper": lgb.LGBMClassifier(n_estimators=4),
    "lightgbm-regressor": lgb.LGBMRegressor(n_estimators=4),
}


@pytest.mark.parametrize("with_sample", [True, False], ids=["sample", "no-sample"])
@pytest.mark.parametrize("name", sorted(UNFITTED))
def test_an_unfitted_model_of_every_family_is_not_fitted(tmp_path, name, with_sample):
    model = UNFITTED[name]
    message = refused(model, tmp_path, X if with_sample else None)
    assert message.startswith(f"{type(model).__name__} is not fitted: "), message


def test_a_booster_trained_zero_rounds_is_not_fitted(tmp_path):
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, Y), num_boost_round=0)
    assert refused(booster, tmp_path).startswith("Booster is not fitted: train it with at least one")


def test_exporting_an_unfitted_model_says_so_too():
    with pytest.raises(TritonflowError, match="^RandomForestClassifier is not fitted"):
        export_model(RandomForestClassifier(4), "auto", 4, NEWEST_TRITON)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RandomForestClassifier, "the model artifact is the class RandomForestClassifier, not a"),
        (
            lambda: [RandomForestClassifier(2).fit(X, Y), RandomForestClassifier(3).fit(X, Y)],
            "the model artifact is a list of models (2), not one model: deploy one model per step",
        ),
        (lambda: {"rf": RandomForestClassifier(2).fit(X, Y)}, "the model artifact is a dict of models (1)"),
        (lambda: None, "the model artifact is None"),
        (lambda: RandomForestClassifier(4).fit(X, np.zeros(len(X))), "trained on one class only ([0.0])"),
        (lambda: xgb.XGBClassifier(n_estimators=2).fit(X, np.zeros(len(X))), "one class only ([0])"),
        (lambda: lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(X, np.ones(len(X))), "only ([1.0])"),
        (lambda: DummyClassifier().fit(np.zeros((20, 0)), np.arange(20) % 2), "trained on 0 features"),
    ],
    ids=["class", "list", "dict", "none", "one-class-rf", "one-class-xgb", "one-class-lgb", "no-features"],
)
def test_artifacts_that_are_not_one_trained_model_are_named(tmp_path, make, message):
    assert message in refused(make(), tmp_path, sample=None)


class Fragile(RandomForestClassifier):
    """Answers one row, as the exporter's width probe asks, and fails inside on a batch."""

    def predict_proba(self, X):
        if len(X) > 1:
            raise RuntimeError("cannot allocate the batch\n  at a line of a C++ stack trace")
        return super().predict_proba(X)


class Undescribable(RandomForestClassifier):
    """Fails inside while the exporter reads its hyperparameters."""

    def get_params(self, deep=True):
        if getattr(self, "estimators_", None) is not None:
            raise KeyError("n_estimators")
        return super().get_params(deep)


@pytest.mark.parametrize(
    ("model", "where"),
    [(Fragile(4), "the parity check of the Fragile"), (Undescribable(4), "exporting the Undescribable")],
    ids=["parity", "export"],
)
def test_a_failure_inside_a_library_is_one_line_naming_the_model_and_the_step(tmp_path, model, where):
    message = refused(model.fit(X, Y), tmp_path)
    assert message.startswith(f"{where} failed inside a library ("), message
    assert "RuntimeError: cannot allocate the batch)" in message or "KeyError: 'n_estimators')" in message
    assert "C++ stack trace" not in message
