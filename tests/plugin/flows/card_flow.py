"""A flow that trains two forests in a foreach and deploys the better one from a select join, for the
deployment card's tests; extra @deploy attributes come from $TINY_DEPLOY (JSON), as in tiny_flow.py.
The join has a card of its own too, listed before @deploy's: both must render."""

import json
import os

import numpy as np
from metaflow import FlowSpec, card, current, deploy, step
from metaflow.cards import Markdown
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score

ATTRIBUTES = json.loads(os.environ.get("TINY_DEPLOY", "{}"))
DEPTHS = {"stump": 1, "deep": 6}  # candidate label -> max_depth: "deep" scores better


class CardFlow(FlowSpec):
    @step
    def start(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(900, 5)).astype("float32")
        y = np.where(X[:, 0] * X[:, 1] + X[:, 2] > 0, "fraud", "legit")
        self.X_train, self.y_train, self.X_val, self.y_val = X[:600], y[:600], X[600:], y[600:]
        self.candidates = list(DEPTHS)
        self.next(self.train, foreach="candidates")

    @step
    def train(self):
        forest = RandomForestClassifier(n_estimators=10, max_depth=DEPTHS[self.input], random_state=0)
        self.model = forest.fit(self.X_train, self.y_train)
        self.val_auc = float(roc_auc_score(self.y_val == "fraud", self.model.predict_proba(self.X_val)[:, 0]))
        self.next(self.select)

    @deploy(select="max:val_auc", name="card-model", sample="X_val", **ATTRIBUTES)
    @card(type="blank", id="notes")
    @step
    def select(self, inputs):
        self.merge_artifacts(inputs, include=["X_val", "y_val"])
        current.card["notes"].append(Markdown("the user's own notes"))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CardFlow()
