"""A flow whose @deploy attributes come from a Metaflow Config (`--config settings <file>`)."""

import numpy as np
from metaflow import Config, FlowSpec, config_expr, deploy, step
from sklearn.ensemble import RandomForestClassifier


class ConfigFlow(FlowSpec):
    settings = Config("settings", default="settings.json")

    @step
    def start(self):
        rng = np.random.default_rng(0)
        self.X = rng.normal(size=(200, 4)).astype("float32")
        self.y = (self.X[:, 0] > 0).astype(int)
        self.next(self.train)

    @deploy(
        name=settings.model.name,
        max_batch_size=config_expr("settings.serving.max_batch_size"),
        instance_kind=settings.serving.instance_kind,
        sample="X",
    )
    @step
    def train(self):
        self.model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(self.X, self.y)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ConfigFlow()
