"""A retrain whose encoder learns one more category: `--merchants N` trains on N merchant values, so
the preprocessing (OneHotEncoder + the numbers as they are) answers N + 2 features, and a deploy with
more merchants than the last one changes the width between the ensemble's steps. @deploy attributes
come from $RETRAIN_DEPLOY (JSON)."""

import json
import os

import numpy as np
import pandas as pd
from metaflow import FlowSpec, Parameter, deploy, step

ATTRIBUTES = json.loads(os.environ.get("RETRAIN_DEPLOY", "{}"))


def frame(rows: int, seed: int, merchants: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({"merchant": rng.choice([f"m-{i}" for i in range(merchants)], rows).astype(object)})
    numbers = rng.normal(size=(rows, 2))
    data["x0"], data["x1"] = numbers[:, 0], numbers[:, 1]
    return data


def labels(data: pd.DataFrame) -> np.ndarray:
    codes = data["merchant"].str.removeprefix("m-").astype(int).to_numpy()
    return (np.sin(codes) + data["x0"].to_numpy() > 0).astype(int)


def build():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    prep = ColumnTransformer([("cat", encode, ["merchant"]), ("num", "passthrough", ["x0", "x1"])])
    return Pipeline([("prep", prep), ("rf", RandomForestClassifier(20, max_depth=6, random_state=0))])


class RetrainFlow(FlowSpec):
    merchants = Parameter("merchants", default=6, type=int, help="merchant values in the training data")

    @step
    def start(self):
        self.X_train = frame(800, 0, self.merchants)
        self.X_val = frame(200, 1, self.merchants)
        self.y_train = labels(self.X_train)
        self.next(self.train)

    @deploy(**ATTRIBUTES)
    @step
    def train(self):
        self.model = build().fit(self.X_train, self.y_train)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetrainFlow()
