"""A flow under @project for the branch tests: one tiny forest, deployed as `fraud`."""

import numpy as np
from metaflow import FlowSpec, deploy, project, step
from sklearn.ensemble import RandomForestClassifier


@project(name="fraud")
class ProjectFlow(FlowSpec):
    @step
    def start(self):
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(200, 4)).astype("float32")
        self.y = (self.X[:, 0] > 0).astype(int)
        self.next(self.train)

    @deploy(name="fraud", sample="X")
    @step
    def train(self):
        self.model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(self.X, self.y)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ProjectFlow()
