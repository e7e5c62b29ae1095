"""Input signatures from a model and an optional sample: width, feature names, parity rows."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.compose import make_column_transformer
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

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


class Predictor:
    """A model of no known library, that does not say how many features it reads."""

    def predict(self, X):
        return np.asarray(X)[:, 0]


def test_unknown_width_asks_for_a_sample():
    with pytest.raises(
        SignatureError, match="cannot tell how many features a Predictor reads: pass a sample"
    ):
        describe(Predictor())


def test_an_artifact_that_is_no_model_is_named_as_such():
    with pytest.raises(SignatureError, match=r"is \{'weights': \[1\]\} \(a dict\), not a trained model"):
        describe({"weights": [1]})


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (np.zeros(4), r"shape \[4\]: pass a 2-D batch"),
        (np.zeros((0, 4)), r"shape \[0, 4\]"),
        ({"amount": [1.0]}, r"the sample has no rows \(a dict\): pass a 2-D batch"),
        (5, r"the sample has no rows \(a int\)"),
    ],
)
def test_samples_that_cannot_be_fp32_rows_are_refused(sample, message):
    with pytest.raises(SignatureError, match=message):
        describe(Predictor(), sample)


@pytest.mark.parametrize(
    ("sample", "columns"),
    [
        (pd.DataFrame({"amount": [1.0], "city": ["Paris"], "plan": ["gold"]}), "['city', 'plan']"),
        (np.array([[1.0, "Paris"], [2.0, "Rome"]], dtype=object), "['column 1']"),
    ],
    ids=["dataframe", "object-array"],
)
def test_string_columns_in_the_sample_are_named_with_what_works(sample, columns):
    with pytest.raises(SignatureError) as caught:
        describe(Predictor(), sample)
    message = str(caught.value)
    assert message.startswith(f"the sample's columns {columns} are not numbers: ")
    assert "one FP32 tensor" in message and "served as a Triton ensemble" in message
    assert "OrdinalEncoder" in message and "\n" not in message


def test_a_sparse_sample_is_read_as_dense_rows(data):
    from scipy import sparse

    frame, y = data
    model = RandomForestClassifier(4).fit(frame.to_numpy(), y)
    rows = describe(model, sparse.csr_matrix(frame.to_numpy()[:7])).rows
    np.testing.assert_array_equal(rows, frame.to_numpy(np.float32)[:7])


def _city_frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    city = rng.choice(["Paris", "Rome", "Oslo"], size=120)
    frame = pd.DataFrame({"amount": rng.normal(size=120), "city": city, "visits": rng.integers(0, 5, 120)})
    return frame, (city == "Paris").astype(int)


def _encoding_pipeline(column: str):
    encode = make_column_transformer((OneHotEncoder(), [column]), remainder="passthrough")
    return make_pipeline(encode, RandomForestClassifier(4, random_state=0))


@pytest.mark.parametrize("with_sample", [False, True], ids=["no-sample", "sample"])
def test_a_pipeline_that_encodes_strings_is_told_it_needs_a_dataframe_sample_to_be_an_ensemble(with_sample):
    frame, y = _city_frame()
    model = _encoding_pipeline("city").fit(frame, y)
    with pytest.raises(SignatureError) as caught:
        describe(model, frame if with_sample else None)
    message = str(caught.value)
    assert message.startswith("the Pipeline reads the columns ['city'] as strings or categories")
    assert "with a numpy sample, or none, it would be served so" in message
    assert "deployed with a DataFrame sample: that is served as a Triton ensemble" in message
    # the same Pipeline encoding a numeric column takes numbers: it is described as before
    numeric = _encoding_pipeline("visits").fit(frame.drop(columns="city"), y)
    assert describe(numeric, frame.drop(columns="city") if with_sample else None).n_features == 2


def _categorical_frame() -> tuple[pd.DataFrame, np.ndarray]:
    frame, y = _city_frame()
    return frame.assign(city=frame["city"].astype("category")).drop(columns="visits"), y


@pytest.mark.parametrize(
    "fit",
    [
        lambda X, y: HistGradientBoostingClassifier(max_iter=4).fit(X, y),
        lambda X, y: lgb.LGBMClassifier(n_estimators=4, verbose=-1).fit(X, y),
        lambda X, y: lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 4),
        lambda X, y: xgb.XGBClassifier(n_estimators=4, enable_categorical=True).fit(X, y),
    ],
    ids=["hgb", "lgb", "lgb-booster", "xgb"],
)
def test_models_trained_on_pandas_categories_are_refused_without_a_sample(fit):
    frame, y = _categorical_frame()
    model = fit(frame, y)
    with pytest.raises(SignatureError, match=r"reads the columns \['city'\] as strings or categories"):
        describe(model)
