"""A flow on a DataFrame of string, category and float columns (floats with missing values), deploying
the model `kind` names with @deploy attributes from $TABULAR_DEPLOY (JSON):
"onehot-xgb" (OneHotEncoder + scaler + XGBoost), "ordinal-hgb" (OrdinalEncoder + HistGradientBoosting),
"lightgbm" (LightGBM on the pandas categories themselves), "xgb-categorical" (XGBoost's own
categorical splits, enable_categorical, on the same categories)."""

import json
import os

import numpy as np
import pandas as pd
from metaflow import FlowSpec, Parameter, deploy, step

ATTRIBUTES = json.loads(os.environ.get("TABULAR_DEPLOY", "{}"))
KINDS = ("onehot-xgb", "ordinal-hgb", "lightgbm", "xgb-categorical")
NATIVE_CATEGORIES = ("lightgbm", "xgb-categorical")  # trained on the pandas categories themselves
MERCHANTS = [f"m-{i}" for i in range(12)]
COUNTRIES = ["DE", "FR", "IT", "NL", "PL"]


def frame(rows: int, seed: int, unseen: float = 0.0, categories: bool = False) -> pd.DataFrame:
    """`categories`: the merchant column as a pandas category too (LightGBM reads those natively)."""
    rng = np.random.default_rng(seed)
    merchant = rng.choice(MERCHANTS, rows).astype(object)
    country = rng.choice(COUNTRIES, rows).astype(object)
    merchant[rng.random(rows) < unseen] = "m-never-seen"
    country[rng.random(rows) < unseen] = "XX"
    numbers = rng.normal(size=(rows, 4))
    numbers[rng.random(numbers.shape) < 0.05] = np.nan
    data = pd.DataFrame({"merchant": merchant, "country": country})
    data["country"] = data["country"].astype(pd.CategoricalDtype(COUNTRIES))  # "XX" becomes NaN there
    if categories:
        data["merchant"] = data["merchant"].astype(pd.CategoricalDtype(MERCHANTS))
    for i in range(4):
        data[f"x{i}"] = numbers[:, i]
    return data


def labels(data: pd.DataFrame) -> np.ndarray:
    codes = data["merchant"].map({m: i for i, m in enumerate(MERCHANTS)}).fillna(0).to_numpy()
    signal = np.sin(codes) + np.nan_to_num(data["x0"].to_numpy()) - (data["country"] == "FR").to_numpy()
    return (signal > 0).astype(int)


class TabularFlow(FlowSpec):
    kind = Parameter(
        "kind", default="onehot-xgb", help="onehot-xgb | ordinal-hgb | lightgbm | xgb-categorical"
    )

    @step
    def start(self):
        categories = self.kind in NATIVE_CATEGORIES
        self.X_train, self.X_val = frame(1500, 0, categories=categories), frame(300, 1, categories=categories)
        self.y_train, self.y_val = labels(self.X_train), labels(self.X_val)
        # what the tests send, unseen categories included
        self.X_test = frame(200, 2, unseen=0.1, categories=categories)
        self.next(self.train)

    @deploy(**ATTRIBUTES)
    @step
    def train(self):
        self.model = build(self.kind).fit(self.X_train, self.y_train)
        self.next(self.end)

    @step
    def end(self):
        pass


def build(kind: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    strings, numbers = ["merchant", "country"], ["x0", "x1", "x2", "x3"]
    if kind == "onehot-xgb":
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler
        from xgboost import XGBClassifier

        scale = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
        prep = ColumnTransformer(
            [("cat", OneHotEncoder(handle_unknown="ignore"), strings), ("num", scale, numbers)]
        )
        return Pipeline([("prep", prep), ("gbm", XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1))])
    if kind == "ordinal-hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.preprocessing import OrdinalEncoder

        encode = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        prep = ColumnTransformer([("cat", encode, strings), ("num", "passthrough", numbers)])
        return Pipeline(
            [("prep", prep), ("hgb", HistGradientBoostingClassifier(max_iter=30, random_state=0))]
        )
    if kind == "xgb-categorical":
        from xgboost import XGBClassifier

        return XGBClassifier(
            n_estimators=40, max_depth=4, enable_categorical=True, tree_method="hist", n_jobs=1
        )
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=30, num_leaves=15, min_child_samples=5, verbose=-1, n_jobs=1)


if __name__ == "__main__":
    TabularFlow()
