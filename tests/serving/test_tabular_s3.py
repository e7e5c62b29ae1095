"""A tabular ensemble in an S3 repository (a real moto server process): @deploy's publish writes the
two steps and the ensemble there, a node serving the bucket answers by column name as the native
model does, and a second deploy's ensemble is followed, on its own steps (its answers are the
second model's)."""

from __future__ import annotations

from typing import Any

import numpy as np
from conftest import wait_for
from tabular_data import tabular_flow

from tritonflow.client import infer_frame
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MODEL = "tabular-s3"
KIND = "xgb-categorical"  # the category step and categorical splits in FIL, from S3


def _deploy(repository: str, model: Any, sample: Any, run: str) -> Any:
    options = parse_options(
        {"name": MODEL, "repository": repository, "sample": "X_val"}, "TabularFlow", False
    )
    task = f"TabularFlow/{run}/train/2"
    provenance = Provenance(metaflow={"flow": "TabularFlow", "run_id": run, "task": task})
    return deploy(model, options, sample=sample, provenance=provenance, sample_name="X_val")


def test_an_ensemble_published_to_s3_is_served_from_it_and_followed_to_the_next_version(s3_bucket, serve):
    flow = tabular_flow()
    X, X_val = flow.frame(1500, 0, categories=True), flow.frame(300, 1, categories=True)
    first = flow.build(KIND).fit(X, flow.labels(X))
    one = _deploy(s3_bucket, first, X_val, "1")
    repository = ModelRepository(s3_bucket)
    assert [step["model"] for step in repository.read_record(MODEL, 1).steps] == [
        f"{MODEL}.preprocess",
        f"{MODEL}.forest",
    ]
    native = flow.frame(200, 2, unseen=0.1, categories=True)
    sent = native.copy()
    sent["merchant"] = sent["merchant"].astype(object).fillna("m-never-seen")

    server = serve(s3_bucket)
    server.wait_for_state(MODEL, 1, "READY")
    served, stamp = infer_frame(server.url, MODEL, sent)
    assert stamp == one.deployment_id
    np.testing.assert_allclose(served, first.predict_proba(native), atol=1e-5)

    second = flow.build(KIND).set_params(n_estimators=5, max_depth=2).fit(X, flow.labels(X))
    two = _deploy(s3_bucket, second, X_val, "2")
    assert two.pins == {f"{MODEL}.preprocess": 2, f"{MODEL}.forest": 2}
    assert np.abs(second.predict_proba(native) - first.predict_proba(native)).max() > 0.05

    def answered_by_two() -> tuple[Any] | None:
        served, stamp = infer_frame(server.url, MODEL, sent)
        return (served,) if stamp == two.deployment_id else None

    (served,) = wait_for(answered_by_two, what="version 2 from S3")
    np.testing.assert_allclose(served, second.predict_proba(native), atol=1e-5)
