"""Model control as Triton has it: who may load and unload, restricted API groups, strict readiness.

In modes `poll` (the default) and `none` the repository decides what is loaded: load and unload
requests are refused and nothing a client sends stops a model. In `explicit` they are accepted,
and `--restrict` can require a header for them (or for any other API group).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, config_for, forest, publish, wait_for
from test_reload import X, infer
from tritonclient.utils import InferenceServerException

MODEL = "fraud-classifier"
OTHER = "churn-classifier"
ADMIN = {"x-admin-key": "s3cret"}
RESTRICT = ("--restrict", "model-repository:x-admin-key=s3cret")


def post(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    status, _, body = server.request("POST", path, b"", headers)
    return status, body.decode()


@pytest.mark.parametrize("mode", ["poll", "none"])
def test_unload_and_load_are_refused_unless_the_mode_is_explicit(serve, local_repo, mode):
    v1 = publish(local_repo, MODEL, forest(0))
    server = serve(local_repo, "--model-control-mode", mode)
    for action in ("unload", "load"):
        status, body = post(server, f"/v2/repository/models/{MODEL}/{action}")
        assert status == 400 and f"model control mode {mode!r}" in body and "explicit" in body
    assert infer(server).deployment == v1.deployment_id  # still serving
    assert server.request("GET", "/v2/health/ready")[0] == 200


def test_mode_none_loads_once_and_never_polls(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = serve(local_repo, "--model-control-mode", "none")
    publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    with pytest.raises(AssertionError):  # the new version never shows up
        wait_for(lambda: infer(server).deployment != v1.deployment_id, timeout=2, what="no reload")
    assert server.index_row(MODEL, 2) == {}


def test_explicit_mode_unload_needs_the_header_and_then_stops_the_model(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = serve(local_repo, "--model-control-mode", "explicit", "--load-model", MODEL, *RESTRICT)
    assert infer(server).deployment == v1.deployment_id
    for headers in (None, {"x-admin-key": "wrong"}, {"x-other": "s3cret"}):
        status, body = post(server, f"/v2/repository/models/{MODEL}/unload", headers)
        assert status == 403 and "'x-admin-key'" in body and "s3cret" not in body
        assert infer(server).deployment == v1.deployment_id
    assert server.request("POST", "/v2/repository/index")[0] == 403  # the whole group

    assert post(server, f"/v2/repository/models/{MODEL}/unload", ADMIN)[0] == 200
    assert infer(server).status == 404
    # an unloaded model is not meant to serve: the server stays ready (Triton's explicit mode)
    assert server.request("GET", "/v2/health/ready")[0] == 200
    assert post(server, f"/v2/repository/models/{MODEL}/load", ADMIN)[0] == 200
    answer = infer(server)
    assert answer.deployment == v1.deployment_id
    np.testing.assert_allclose(answer.outputs, forest(0).proba(X), atol=PROBA_ATOL)


def test_explicit_mode_loads_only_what_is_named_and_follows_load_requests(serve, local_repo):
    publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    publish(local_repo, OTHER, forest(1), config_for(OTHER, forest(1)))
    server = serve(local_repo, "--model-control-mode", "explicit", "--load-model", OTHER)
    assert server.request("GET", f"/v2/models/{MODEL}/ready")[0] == 404
    assert server.request("GET", f"/v2/models/{OTHER}/ready")[0] == 200
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    assert post(server, f"/v2/repository/models/{MODEL}/load")[0] == 200  # no --restrict: open
    assert infer(server).deployment == v2.deployment_id


def test_a_load_of_a_model_that_does_not_exist_leaves_nothing_behind(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    server = serve(local_repo, "--model-control-mode", "explicit", "--load-model", "*")
    status, body = post(server, "/v2/repository/models/no-such-model/load")
    # NOTE: Triton's status and words for it (400, "failed to load 'x'"), and no server path
    assert status == 400 and "failed to load 'no-such-model'" in body and str(local_repo) not in body
    assert post(server, "/v2/repository/models/no-such-model/unload")[0] == 404
    assert [r["name"] for r in server.index()] == [MODEL]


def test_a_restricted_inference_group_needs_the_header_from_any_triton_client(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = serve(local_repo, "--restrict", "inference,metadata:authorization=Bearer t0ken")
    x = httpclient.InferInput("input__0", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="restricted API group 'inference'"):
        server.client.infer(MODEL, [x])
    with pytest.raises(InferenceServerException, match="restricted"):
        server.client.get_model_metadata(MODEL)
    result = server.client.infer(MODEL, [x], headers={"authorization": "Bearer t0ken"})
    assert result.get_response()["parameters"]["deployment_id"] == v1.deployment_id
    assert server.client.is_server_ready()  # health is not restricted
    assert server.request("GET", "/metrics")[0] == 200


@pytest.mark.parametrize(
    "value, message",
    [
        ("model-repository", "expected GROUP[,GROUP...]:HEADER=VALUE"),
        ("models:x-key=1", "unknown API group 'models'"),
        ("inference:x-key=", "expected GROUP"),
    ],
)
def test_a_bad_restrict_value_stops_the_start_with_its_reason(local_repo, value, message):
    done = subprocess.run(
        [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--restrict", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and message in done.stderr


def test_strict_readiness_says_which_model_does_not_serve(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    publish(local_repo, OTHER, forest(1), config_for(OTHER, forest(1)), files={"checkpoint.tl": b"broken"})
    server = serve(local_repo, "--strict-readiness", "false")
    assert server.request("GET", "/v2/health/ready")[0] == 200
    strict = serve(local_repo)
    status, _, body = strict.request("GET", "/v2/health/ready")
    assert status == 503 and f"model {OTHER!r} is not serving" in body.decode()
    assert "checkpoint.tl" in body.decode()  # and why
    assert infer(strict).status == 200  # the models that load still serve
