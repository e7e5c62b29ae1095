"""A tabular Pipeline split for an ensemble (plugin/exporters/tabular.py): the preprocessing as ONNX
with one input per DataFrame column, run in ONNX Runtime, hands the trees the very features the
native pipeline does, so the trees' Treelite checkpoint answers as the native pipeline, unseen
categories and missing numbers included."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import treelite
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)
from xgboost import XGBClassifier

from tritonflow.plugin.exporters import ExportError, export_model, native_model
from tritonflow.plugin.exporters.tabular import (
    FEATURES,
    columns_of,
    export_ensemble,
    preprocess_onnx,
    split_pipeline,
)
from tritonflow.serving.frames import column_tensor

NUMBERS = ["amount", "age", *[f"x{j}" for j in range(6)]]


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "merchant": rng.choice(["grocer", "fuel", "travel", "online"], n),  # pandas 3: dtype str
            "country": pd.Categorical(rng.choice(["FR", "US", "DE"], n)),
            "amount": rng.lognormal(4, 1, n),
            "age": rng.integers(18, 90, n).astype(np.float64),
            **{f"x{j}": rng.normal(size=n) for j in range(6)},
        }
    )
    df.loc[::17, "amount"] = np.nan
    return df


def labels(df: pd.DataFrame) -> np.ndarray:
    return ((df.merchant == "travel") | (df.amount.fillna(0) > 90) | (df.x0 > 1)).to_numpy(int)


def run(preprocess_bytes: bytes, df: pd.DataFrame) -> np.ndarray:
    session = ort.InferenceSession(preprocess_bytes)
    feed = {name: column_tensor(df, name, datatype) for name, datatype in columns_of(df)}
    for name, tensor in feed.items():  # ONNX Runtime takes strings as str, the wire carries bytes
        if tensor.dtype == object:
            feed[name] = tensor.astype(str).astype(object)
    (features,) = session.run([FEATURES], feed)
    return features


def ensemble_answer(pipe: Pipeline, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """What the two steps answer on `df`, and the features the first hands the second."""
    preprocess, trees = split_pipeline(pipe)
    onnx_bytes = preprocess_onnx(preprocess, columns_of(df))
    features = run(onnx_bytes, df)
    checkpoint = native_model(trees).to_treelite()
    return treelite.gtil.predict(checkpoint, features).reshape(len(df), -1), features


def test_one_hot_scaled_xgboost_answers_as_the_native_pipeline() -> None:
    train = frame(3000, 0)
    prep = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["merchant", "country"]),
            ("num", Pipeline([("fill", SimpleImputer()), ("scale", StandardScaler())]), NUMBERS),
        ]
    )
    pipe = Pipeline([("prep", prep), ("gbm", XGBClassifier(n_estimators=200, max_depth=6))]).fit(
        train, labels(train)
    )
    test = frame(1000, 1)
    test.loc[:4, "merchant"] = "never-seen"  # unknown categories: all-zero one-hot, as natively
    answer, features = ensemble_answer(pipe, test)
    native = pipe[:-1].transform(test)
    assert np.array_equal(features, np.asarray(native, dtype=np.float32)), "the trees see other features"
    np.testing.assert_allclose(answer[:, -1], pipe.predict_proba(test)[:, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("scaler", [StandardScaler(), MaxAbsScaler()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalers_hand_the_trees_the_native_features_bit_for_bit(scaler, dtype) -> None:
    train = frame(3000, 4)[NUMBERS[1:]].astype(dtype)  # NOTE: "amount" holds NaN, which scalers keep
    prep = ColumnTransformer([("num", scaler, NUMBERS[1:])]).fit(train)
    test = frame(2000, 5)[NUMBERS[1:]].astype(dtype)
    features = run(preprocess_onnx(prep, columns_of(test)), test)
    assert np.array_equal(features, prep.transform(test).astype(np.float32)), "an ulp off: a split crossed"


def test_ordinal_encoded_hist_gradient_boosting_answers_as_the_native_pipeline() -> None:
    train = frame(2000, 2)
    prep = ColumnTransformer(
        [("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["merchant"])],
        remainder="passthrough",
    )
    data = train.drop(columns=["country"])
    pipe = Pipeline([("prep", prep), ("gbm", HistGradientBoostingClassifier(max_iter=60))]).fit(
        data, labels(train)
    )
    test = frame(500, 3).drop(columns=["country"])
    test.loc[:3, "merchant"] = "never-seen"
    answer, _ = ensemble_answer(pipe, test)
    np.testing.assert_allclose(answer[:, -1], pipe.predict_proba(test)[:, 1], rtol=0, atol=1e-6)


def test_a_regressor_behind_a_scaler() -> None:
    train = frame(1000, 4).drop(columns=["merchant", "country"])
    pipe = Pipeline([("scale", StandardScaler()), ("rf", RandomForestRegressor(30, max_depth=6))])
    pipe.fit(train.fillna(0), train.x1 * 3 + train.age)
    test = frame(300, 5).drop(columns=["merchant", "country"]).fillna(0)
    answer, _ = ensemble_answer(pipe, test)
    np.testing.assert_allclose(answer.ravel(), pipe.predict(test), rtol=1e-6, atol=1e-5)


def test_columns_travel_as_their_own_type() -> None:
    df = pd.DataFrame(
        {
            "s": ["a", "b"],
            "o": pd.Series(["a", None], dtype=object),
            "c": pd.Categorical(["x", "y"]),
            "f": [1.0, 2.0],
            "g": np.array([1, 2], dtype=np.float32),
            "i": [1, 2],
            "b": [True, False],
        }
    )
    assert columns_of(df) == [
        ("s", "BYTES"),
        ("o", "BYTES"),
        ("c", "BYTES"),
        ("f", "FP64"),
        ("g", "FP32"),
        ("i", "INT64"),
        ("b", "BOOL"),
    ]


def test_only_preprocessing_in_front_of_trees_is_split() -> None:
    X = frame(200, 6)[NUMBERS].fillna(0)
    y = labels(frame(200, 6))
    forest = XGBClassifier(n_estimators=5).fit(X, y)
    assert split_pipeline(forest) is None
    assert split_pipeline(Pipeline([("p", "passthrough"), ("m", forest)])) is None
    assert split_pipeline(Pipeline([("s", StandardScaler()), ("lr", LogisticRegression())]).fit(X, y)) is None
    split = split_pipeline(Pipeline([("s", StandardScaler()), ("m", forest)]))
    assert split is not None and split[1] is forest and [n for n, _ in split[0].steps] == ["s"]


def test_a_step_skl2onnx_cannot_convert_is_named() -> None:
    X = frame(200, 7)[NUMBERS].fillna(0)
    pipe = Pipeline([("odd", FunctionTransformer(np.log1p)), ("m", XGBClassifier(n_estimators=3))])
    pipe.fit(X.abs(), labels(frame(200, 7)))
    with pytest.raises(ExportError, match=r"cannot convert the preprocessing \(odd: FunctionTransformer\)"):
        preprocess_onnx(split_pipeline(pipe)[0], columns_of(X))


def test_xgboost_on_pandas_categories_takes_the_values_and_reads_unseen_ones_as_missing() -> None:
    train = frame(3000, 4).astype({"merchant": "category"})
    model = XGBClassifier(n_estimators=100, max_depth=5, enable_categorical=True).fit(train, labels(train))
    test = frame(400, 5)
    test.loc[:5, "merchant"] = "aaa-never-seen"  # sorts before every training category
    export = export_ensemble(model, train.head(50), "24.10")
    assert export is not None and [step for step, _ in export.steps] == ["preprocess", "forest"]
    features = run(export.steps[0][1].files["model.onnx"], test)
    answer = treelite.gtil.predict(native_model(model).to_treelite(), features).reshape(len(test), -1)
    # what XGBoost answers when an unseen value is missing: the learned default branch at each split
    as_missing = test.astype({"merchant": pd.CategoricalDtype(["fuel", "grocer", "online", "travel"])})
    assert as_missing["merchant"].isna().sum() == 6
    native = model.predict_proba(as_missing)[:, 1]
    np.testing.assert_allclose(answer[:, -1], native, rtol=0, atol=1e-6)
    np.testing.assert_allclose(export.native_predict(test)[:, -1], native, rtol=0, atol=1e-6)


def test_the_same_model_exports_the_same_bytes_each_time() -> None:
    """A retried task finds its earlier versions by their files' sha256: ONNX exports are named by a
    fresh uuid unless the exporter fixes the graph's name."""
    train = frame(500, 6)
    pipe = Pipeline(
        [
            ("prep", ColumnTransformer([("cat", OneHotEncoder(), ["merchant"])], remainder="passthrough")),
            ("gbm", XGBClassifier(n_estimators=5)),
        ]
    ).fit(train.drop(columns="country"), labels(train))
    exports = [export_ensemble(pipe, train.drop(columns="country").head(50), "24.10") for _ in range(2)]
    files = [[st.files for _, st in export.steps] for export in exports if export is not None]
    assert len(files) == 2 and files[0] == files[1]
    whole = LogisticRegression().fit(train[NUMBERS].fillna(0), labels(train))
    onnx = [export_model(whole, "onnx", len(NUMBERS), "24.10").files for _ in range(2)]
    assert onnx[0] == onnx[1]
