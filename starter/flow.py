"""A starter flow: train candidates in a foreach, keep the best, deploy it with @deploy.

    python flow.py run                          # synthetic fraud data
    python flow.py run --data my.csv --target label
Copy it, replace the data and the candidates, keep the shape.
"""

from metaflow import FlowSpec, Parameter, deploy, step


def candidate(kind: str):
    """An untrained model for each name in StarterFlow.candidates."""
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0)
    if kind == "gradient_boosting":
        # NOTE: scikit-learn's own boosting, so the starter needs no other model library; an
        # XGBClassifier or LGBMClassifier drops in here the same way (flows/fraud_flow.py has both).
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, max_depth=4, random_state=0)
    if kind == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    raise ValueError(f"unknown candidate {kind!r}")


class StarterFlow(FlowSpec):
    data = Parameter("data", default="", help="CSV file with a label column (default: synthetic)")
    target = Parameter("target", default="Class", help="label column of --data")
    rows = Parameter("rows", default=6000, help="rows of synthetic data")

    @step
    def start(self):
        import pandas as pd
        from sklearn.model_selection import train_test_split

        if self.data:
            frame = pd.read_csv(self.data)
        else:
            from fraud_data import synthetic_transactions

            frame = synthetic_transactions(int(self.rows), seed=0)
        X = frame.drop(columns=[self.target]).astype("float32")
        y = frame[self.target].to_numpy()
        self.X_train, self.X_val, self.y_train, self.y_val = train_test_split(
            X, y, test_size=0.25, stratify=y, random_state=0
        )
        self.candidates = ["random_forest", "gradient_boosting", "logistic_regression"]
        self.next(self.train, foreach="candidates")

    @step
    def train(self):
        from sklearn.metrics import roc_auc_score

        self.kind = self.input
        self.model = candidate(self.kind).fit(self.X_train, self.y_train)
        self.val_auc = float(roc_auc_score(self.y_val, self.model.predict_proba(self.X_val)[:, 1]))
        self.metrics = {"val_auc": self.val_auc}
        print(f"{self.kind}: val_auc={self.val_auc:.4f}")
        self.next(self.select)

    @deploy(select="max:val_auc", name="fraud-classifier", sample="X_val", metrics="metrics")
    @step
    def select(self, inputs):
        self.merge_artifacts(inputs, include=["X_val", "y_val"])
        self.next(self.end)

    @step
    def end(self):
        print(f"deployed {self.deployment_id}")


if __name__ == "__main__":
    StarterFlow()
