"""A flow whose training step keeps its training matrix and a shifted holdout, for the reference profile's
tests; the decorator's attributes come from $TINY_DEPLOY (JSON), as in tiny_flow.py."""

import json
import os

import numpy as np
import pandas as pd
from metaflow import FlowSpec, deploy, step
from sklearn.ensemble import RandomForestClassifier

ATTRIBUTES = json.loads(os.environ.get("TINY_DEPLOY", "{}"))
COLUMNS = ["f0", "f1", "f2", "f3"]


class HoldoutFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @step
    def train(self):
        rng = np.random.default_rng(1)
        self.X_train = pd.DataFrame(rng.normal(size=(600, 4)).astype("float32"), columns=COLUMNS)
        self.y_train = (self.X_train["f0"] > 0).astype(int).to_numpy()
        # drawn from a shifted distribution: a profile of the sample would be off by 3 per feature
        self.X_val = pd.DataFrame(rng.normal(3, 1, size=(200, 4)).astype("float32"), columns=COLUMNS)
        self.embedding = rng.normal(size=(600, 2))  # a matrix of another width: not model input
        self.model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
        self.model.fit(self.X_train, self.y_train)
        self.next(self.release)

    @deploy(**ATTRIBUTES)
    @step
    def release(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HoldoutFlow()
