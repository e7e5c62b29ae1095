"""Triton 24.10's gRPC and the node refuse a repository_name on the repository RPCs alike (UNIMPLEMENTED).

Found by the node's gRPC fuzz (tests/serving/test_grpc_fuzz.py): the node ignored the field and
answered the index of its own repository, whatever repository a client named.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

MODEL = "named"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["triton", "node"])
def stub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    X, y = make_classification(100, 4, random_state=5)
    repository = tmp_path_factory.mktemp("triton-repository-name") / "repo"
    deploy_direct(
        repository, MODEL, RandomForestClassifier(n_estimators=2).fit(X, y), X.astype(np.float32), "602"
    )
    if request.param == "triton":
        triton = request.getfixturevalue("start_triton")(repository)
        triton.wait_ready(MODEL, 1)
        url = f"127.0.0.1:{triton.grpc_port}"
    else:
        url = request.getfixturevalue("serve_module")(repository).grpc_url
    channel = grpc.insecure_channel(url)
    request.addfinalizer(channel.close)
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="other")),
        lambda s: s.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(repository_name="other", model_name=MODEL)
        ),
        lambda s: s.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(repository_name="other", model_name=MODEL)
        ),
    ],
    ids=["index", "load", "unload"],
)
def test_a_repository_name_is_not_supported(stub: Any, call: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(stub)
    found = (
        caught.value.code(),
        "'repository_name' specification is not supported" in caught.value.details(),
    )
    assert found == (grpc.StatusCode.UNIMPLEMENTED, True), caught.value.details()
    assert [m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models] == [MODEL]
