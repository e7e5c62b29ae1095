"""Input signatures from a model and an optional sample: width, feature names, parity rows."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tritonflow.plugin.signature import SignatureError, describe, generated_rows

COLUMNS = ["amount", "age", "hour", "score"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    X, y = make_classification(200, 4, random_state=0)
    return pd.DataFrame(X, columns=COLUMNS), y


def test_a_dataframe_sample_names_the_features(data):
    frame, y = data
    signature = describe(RandomForestClassifier(4).fit(frame, y), frame)
    assert signature.n_features == 4 and signature.feature_names == COLUMNS
    assert signature.rows.dtype == np.float32 and signature.rows.shape == (200, 4)
    np.testing.assert_array_equal(signature.rows, frame.to_numpy(np.float32))


@pytest.mark.parametrize(
    "fit",
    [
        lambda X, y: RandomForestClassifier(4).fit(X, y),
        lambda X, y: make_pipeline(StandardScaler(), RandomForestClassifier(4)).fit(X, y),
        lambda X, y: xgb.XGBClassifier(n_estimators=4).fit(X, y),
        lambda X, y: xgb.XGBClassifier(n_estimators=4).fit(X, y).get_booster(),
        lambda X, y: lgb.LGBMClassifier(n_estimators=4, verbose=-1).fit(X, y),
        lambda X, y: lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 4),
    ],
    ids=["sklearn", "pipeline", "xgb", "xgb-booster", "lgb", "lgb-booster"],
)
def test_without_a_sample_the_model_gives_width_and_names(data, fit):
    frame, y = data
    signature = describe(fit(frame, y))
    assert signature.n_features == 4 and signature.feature_names == COLUMNS
    assert signature.rows.shape == (256, 4) and signature.rows.dtype == np.float32
    unnamed = describe(fit(frame.to_numpy(), y), frame.to_numpy()[:10])
    assert unnamed.feature_names is None and unnamed.rows.shape == (10, 4)


def test_generated_rows_are_deterministic_and_spread():
    rows = generated_rows(3)
    np.testing.assert_array_equal(rows, generated_rows(3))
    magnitudes = np.abs(rows).max(axis=1)
    assert magnitudes.min() < 0.1 and magnitudes.max() > 100  # several decades, for splits at any scale


def test_list_samples_are_accepted_and_long_ones_capped(data):
    frame, y = data
    model = RandomForestClassifier(4).fit(frame.to_numpy(), y)
    assert describe(model, [[0.0, 1.0, 2.0, 3.0]]).rows.shape == (1, 4)
    assert describe(model, np.zeros((5000, 4))).rows.shape == (1024, 4)


def test_a_sample_of_the_wrong_width_is_refused(data):
    frame, y = data
    model = RandomForestClassifier(4).fit(frame, y)
    with pytest.raises(
        SignatureError, match="the sample has 3 columns but the RandomForestClassifier reads 4"
    ):
        describe(model, frame.iloc[:, :3].to_numpy())


def test_columns_out_of_training_order_are_refused(data):
    frame, y = data
    model = RandomForestClassifier(4).fit(frame, y)
    with pytest.raises(SignatureError, match=r"not the model's features in training order \['amount'"):
        describe(model, frame[COLUMNS[::-1]])


def test_unknown_width_asks_for_a_sample():
    with pytest.raises(SignatureError, match="cannot tell how many features a object reads: pass a sample"):
        describe(object())


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (pd.DataFrame({"amount": [1.0], "city": ["Paris"]}), r"columns \['city'\] are not numbers"),
        (np.zeros(4), r"shape \[4\]: pass a 2-D batch"),
        (np.zeros((0, 4)), r"shape \[0, 4\]"),
    ],
)
def test_samples_that_cannot_be_fp32_rows_are_refused(sample, message):
    with pytest.raises(SignatureError, match=message):
        describe(object(), sample)
