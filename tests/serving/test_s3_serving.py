"""A repository in S3 (a real moto server process): served, and hot-reloaded as new versions land."""

from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, data, forest, publish, wait_for

MODEL = "fraud-classifier"
X = data()[0][:4]


def test_s3_repository_is_served_and_hot_reloaded(serve, s3_bucket, tmp_path):
    v1 = publish(s3_bucket, MODEL, forest(0), run_id="1000000000000001")
    server = serve(s3_bucket)
    tensor = httpclient.InferInput("input__0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)

    def answer() -> dict:
        result = server.client.infer(MODEL, [tensor])  # raises on anything but 200
        return {
            "id": result.get_response()["parameters"]["deployment_id"],
            "out": result.as_numpy("output__0"),
        }

    first = answer()
    assert first["id"] == v1.deployment_id
    np.testing.assert_allclose(first["out"], forest(0).proba(X), atol=PROBA_ATOL)
    lineage = server.json("GET", f"/v2/models/{MODEL}/versions/1/lineage")
    assert lineage["deployment"]["repository"] == s3_bucket
    assert list((tmp_path / "cache").rglob("checkpoint.tl"))  # downloaded into --cache-dir

    v2 = publish(s3_bucket, MODEL, forest(2), run_id="1000000000000002")
    wait_for(lambda: answer()["id"] == v2.deployment_id, what="v2 from S3")
    np.testing.assert_allclose(answer()["out"], forest(2).proba(X), atol=PROBA_ATOL)

    publish(s3_bucket, MODEL, forest(0), run_id="1000000000000003", files={"checkpoint.tl": b"\0" * 64})
    assert "checkpoint.tl" in server.wait_for_state(MODEL, 3, "UNAVAILABLE")["reason"]
    assert answer()["id"] == v2.deployment_id
