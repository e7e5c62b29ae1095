"""A small flow for @deploy's tests; the decorator's attributes come from $TINY_DEPLOY (JSON)."""

import json
import os
import threading

import numpy as np
import pandas as pd
from metaflow import FlowSpec, Parameter, current, deploy, step
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

ATTRIBUTES = json.loads(os.environ.get("TINY_DEPLOY", "{}"))


class OffsetForest(RandomForestClassifier):
    """A forest whose own predictions are post-processed, so its exported trees disagree with it."""

    def predict_proba(self, X):
        return np.clip(super().predict_proba(X) + 0.05, 0, 1)


class TinyFlow(FlowSpec):
    kind = Parameter("kind", default="forest", help="forest | offset | unfitted | text | none | object")
    features = Parameter("features", default=8)
    fail_first_attempt = Parameter("fail_first_attempt", default=False, help="fail after @deploy, once")

    @step
    def start(self):
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(400, int(self.features))).astype("float32")
        self.y = (self.X[:, 0] + self.X[:, 1] > 0).astype(int)
        if self.kind == "text":  # a string column, as a new user's own data has
            self.X_text = pd.DataFrame({"amount": self.X[:, 0], "city": np.where(self.y, "Paris", "Rome")})
        self.next(self.train)

    @deploy(**ATTRIBUTES)
    @step
    def train(self):
        print("train: the step body runs")
        if self.kind == "forest":
            forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
            self.model = forest.fit(self.X, self.y)
        elif self.kind == "offset":
            self.model = OffsetForest(n_estimators=10, max_depth=4, random_state=0).fit(self.X, self.y)
        elif self.kind == "unfitted":
            self.model = RandomForestClassifier(n_estimators=10)  # .fit forgotten
        elif self.kind == "text":  # a Pipeline that encodes the string column itself
            encode = make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough")
            pipeline = make_pipeline(encode, RandomForestClassifier(n_estimators=10))
            self.model = pipeline.fit(self.X_text, self.y)
        elif self.kind == "object":
            self.model = {"weights": [1, 2, 3]}
        self.trained = True
        if self.fail_first_attempt and current.retry_count == 0:
            # Unpicklable: the task fails when Metaflow saves artifacts, after @deploy published.
            self.unsaveable = threading.Lock()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TinyFlow()
