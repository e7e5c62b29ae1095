"""Train fraud classifiers, keep the best by validation AUC, and deploy it to a Triton repository.

python flows/fraud_flow.py run                                   # synthetic data
python flows/fraud_flow.py run --data transactions.csv --target Class
TRITONFLOW_REPOSITORY=s3://models/prod python flows/fraud_flow.py run

The XGBoost and LightGBM candidates need those libraries: pip install 'tritonflow[examples]'.
"""

import hashlib
import importlib.util
import os

from metaflow import FlowSpec, Parameter, deploy, step

from tritonflow.starter.fraud_data import synthetic_transactions

CANDIDATES = ["random_forest", "xgboost", "lightgbm", "logistic_regression"]


def build_model(kind: str, seed: int):
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, max_depth=8, n_jobs=-1, random_state=seed)
    if kind == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(n_estimators=200, max_depth=6, learning_rate=0.1, n_jobs=2, random_state=seed)
    if kind == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=200, num_leaves=31, verbose=-1, random_state=seed)
    if kind == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    raise ValueError(f"unknown candidate {kind!r}: choose from {CANDIDATES}")


class FraudFlow(FlowSpec):
    data = Parameter("data", default="", help="CSV or Parquet file (default: synthetic data)")
    target = Parameter("target", default="Class", help="label column of --data")
    rows = Parameter("rows", default=20_000, help="rows of synthetic data")
    seed = Parameter("seed", default=7, help="random seed for data and models")

    @step
    def start(self):
        # NOTE: before any work: a missing library would otherwise fail one foreach branch mid-run.
        missing = [name for name in ("xgboost", "lightgbm") if importlib.util.find_spec(name) is None]
        if missing:
            raise SystemExit(
                f"{' and '.join(missing)} not installed: pip install 'tritonflow[examples]' "
                "(or drop those candidates from CANDIDATES)"
            )
        self.next(self.preprocess)

    @step
    def preprocess(self):
        import pandas as pd
        from sklearn.model_selection import train_test_split

        if self.data:
            with open(self.data, "rb") as f:
                raw = f.read()
            self.data_source = {
                "path": os.path.abspath(self.data),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "size": len(raw),
            }
            frame = pd.read_parquet(self.data) if self.data.endswith(".parquet") else pd.read_csv(self.data)
            if self.target not in frame.columns:
                raise ValueError(f"--target {self.target!r} is not a column of {self.data}")
        else:
            frame = synthetic_transactions(int(self.rows), int(self.seed))
            self.data_source = {"synthetic": True, "rows": int(self.rows), "seed": int(self.seed)}
        features = frame.drop(columns=[self.target]).astype("float32")
        labels = frame[self.target].to_numpy()
        self.X_train, self.X_val, self.y_train, self.y_val = train_test_split(
            features, labels, test_size=0.25, stratify=labels, random_state=int(self.seed)
        )
        print(
            f"{len(self.X_train)} training rows, {len(features.columns)} features, {labels.mean():.2%} fraud"
        )
        self.candidates = CANDIDATES
        self.next(self.train, foreach="candidates")

    @step
    def train(self):
        from sklearn.metrics import average_precision_score, roc_auc_score

        self.kind = self.input
        self.model = build_model(self.kind, int(self.seed)).fit(self.X_train, self.y_train)
        scores = self.model.predict_proba(self.X_val)[:, 1]
        self.val_auc = float(roc_auc_score(self.y_val, scores))
        self.metrics = {
            "val_auc": self.val_auc,
            "val_average_precision": float(average_precision_score(self.y_val, scores)),
        }
        print(f"{self.kind}: val_auc={self.val_auc:.4f}")
        self.next(self.select)

    @deploy(select="max:val_auc", name="fraud-classifier", sample="X_val", metrics="metrics")
    @step
    def select(self, inputs):
        self.merge_artifacts(inputs, include=["X_val", "y_val"])
        self.next(self.end)

    @step
    def end(self):
        repository = self.deployment["repository"]
        print(f"deployed {self.deployment_id}")
        print(f"serve it:   tritonflow serve {repository}")
        print(f"trace it:   tritonflow lineage {self.deployment_id} --repository {repository}")


if __name__ == "__main__":
    FraudFlow()
