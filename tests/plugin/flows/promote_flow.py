"""A flow that deploys with @deploy(promote=...) from $PROMOTE_DEPLOY (JSON); `quality` picks the model:
"fair" (a shallow forest), "shuffled" (trained on shuffled labels: worse), "good" (a deeper forest)."""

import json
import os

import numpy as np
from metaflow import FlowSpec, Parameter, deploy, step
from sklearn.ensemble import RandomForestClassifier

ATTRIBUTES = json.loads(os.environ.get("PROMOTE_DEPLOY", "{}"))
FORESTS = {"fair": (3, 1), "shuffled": (3, 1), "good": (40, 6)}  # quality -> (trees, depth)


class PromoteFlow(FlowSpec):
    quality = Parameter("quality", default="fair", help="fair | shuffled | good")
    fail_at_end = Parameter("fail_at_end", default=False, type=bool, help="the run fails after the deploy")

    @step
    def start(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(1200, 6)).astype("float32")
        y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
        self.X_train, self.y_train, self.X_val, self.y_val = X[:800], y[:800], X[800:], y[800:]
        self.next(self.train)

    @deploy(**ATTRIBUTES)
    @step
    def train(self):
        trees, depth = FORESTS[self.quality]
        y = np.random.default_rng(1).permutation(self.y_train) if self.quality == "shuffled" else self.y_train
        self.model = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0).fit(
            self.X_train, y
        )
        self.next(self.end)

    @step
    def end(self):
        if self.fail_at_end:
            raise RuntimeError("the run fails after its deploy step")


if __name__ == "__main__":
    PromoteFlow()
