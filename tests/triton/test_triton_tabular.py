"""Real Triton serves the ensembles @deploy writes for tabular pipelines, unchanged: the same answers
as the native model and as our node, by column name over HTTP and gRPC, unseen categories and
missing values included; and after a rollback it serves the rolled-back ensemble on its old steps.

The pipelines are tests/plugin/flows/tabular_flow.py's (OneHot + XGBoost, Ordinal + HistGB, LightGBM
and XGBoost on pandas categories), deployed in-process by tritonflow.plugin.publish.deploy; Triton 24.10 runs
its own ensemble scheduler over our Python-based `onnxruntime` and `fil` backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from servers import wait_for
from tabular_data import tabular_flow
from test_triton_compat import deploy_direct
from tritonclient.utils import InferenceServerException

from tritonflow.client import FrameError, infer_frame
from tritonflow.lineage.releases import rollback
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.release_policy import champion_config

ATOL = 1e-5

pytestmark = pytest.mark.slow


flow = tabular_flow()
KINDS = flow.KINDS


@dataclass(frozen=True)
class Deployed:
    """One kind's ensemble version: the frame a client sends, and the trained model's own answers."""

    name: str
    deployment_id: str
    pins: dict[str, int]
    frame: pd.DataFrame
    native: np.ndarray


def request_frames(kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(what the native model reads, what a client sends): 200 rows, 10% unseen categories, missing
    values. A pandas category column holds no unseen value (NaN there, which the model reads as
    missing, as the ensemble reads a value it never saw): a client sends the value itself."""
    native = flow.frame(200, 2, unseen=0.1, categories=kind in flow.NATIVE_CATEGORIES)
    sent = native.copy()
    if kind in flow.NATIVE_CATEGORIES:
        sent["merchant"] = sent["merchant"].astype(object).fillna("m-never-seen")
    assert (sent["merchant"] == "m-never-seen").any() and sent["country"].isna().any()
    return native, sent


def deploy_kind(root: Path, kind: str, seed: int, run_id: str) -> Deployed:
    """`kind` trained on rows of `seed`, deployed with a DataFrame sample as @deploy does."""
    categories = kind in flow.NATIVE_CATEGORIES
    X = flow.frame(1500, seed, categories=categories)
    model = flow.build(kind).fit(X, flow.labels(X))
    record = deploy_direct(root, f"tab-{kind}", model, flow.frame(300, 1, categories=categories), run_id)
    assert record.format == "ensemble"
    native, sent = request_frames(kind)
    return Deployed(record.model_name, record.deployment_id, record.pins, sent, model.predict_proba(native))


def urls(triton: Any) -> dict[str, str]:
    return {"http": f"127.0.0.1:{triton.http_port}", "grpc": f"127.0.0.1:{triton.grpc_port}"}


def answers(url: str, deployed: Deployed, protocol: str) -> np.ndarray | None:
    """The served answer for the deployed frame; None while the server refuses it (reloading)."""
    try:
        return infer_frame(url, deployed.name, deployed.frame, protocol=protocol)[0]
    except FrameError:
        return None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Deployed]]:
    root = tmp_path_factory.mktemp("triton-tabular") / "repo"
    return root, {kind: deploy_kind(root, kind, 0, str(800 + i)) for i, kind in enumerate(KINDS)}


@pytest.fixture(scope="module")
def servers(start_triton: Any, serve_module: Any, deployed: tuple[Path, dict[str, Deployed]]) -> Any:
    root, models = deployed
    triton = start_triton(root)
    node = serve_module(root)
    for one in models.values():
        for model in (one.name, *one.pins):
            triton.wait_ready(model, 1)
        node.wait_for_state(one.name, 1, "READY")
    return triton, node


def test_triton_loads_the_ensembles_and_their_steps_as_written(servers: Any, deployed: Any) -> None:
    triton, node = servers
    for one in deployed[1].values():
        theirs, ours = triton.http.get_model_config(one.name), node.client.get_model_config(one.name)
        assert theirs["platform"] == "ensemble"
        for key in ("input", "output", "max_batch_size"):
            assert ours[key] == theirs[key], key
        steps = theirs["ensemble_scheduling"]["step"]
        assert {s["model_name"]: int(s["model_version"]) for s in steps} == one.pins
        assert steps == ours["ensemble_scheduling"]["step"]
        for model, version in one.pins.items():
            assert triton.http.is_model_ready(model, str(version))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", KINDS)
def test_triton_answers_a_frame_as_the_native_model_and_the_node(
    servers: Any, deployed: Any, kind: str, protocol: str
) -> None:
    triton, node = servers
    one = deployed[1][kind]
    theirs, stamped = infer_frame(urls(triton)[protocol], one.name, one.frame, protocol=protocol)
    node_url = node.url if protocol == "http" else node.grpc_url
    ours, deployment_id = infer_frame(node_url, one.name, one.frame, protocol=protocol)
    assert stamped is None and deployment_id == one.deployment_id  # NOTE: stock Triton stamps nothing
    np.testing.assert_allclose(theirs, one.native, atol=ATOL)
    np.testing.assert_allclose(theirs, ours, atol=ATOL)


def test_triton_serves_the_rolled_back_ensemble_on_its_old_steps(start_triton: Any, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    first = {kind: deploy_kind(root, kind, 0, str(810 + i)) for i, kind in enumerate(KINDS)}
    triton = start_triton(root)
    for one in first.values():
        triton.wait_ready(one.name, 1)
    second = {kind: deploy_kind(root, kind, 5, str(820 + i)) for i, kind in enumerate(KINDS)}
    repository = ModelRepository(str(root))

    def serves(one: Deployed, version: int) -> bool:
        try:
            config = triton.http.get_model_config(one.name)
        except InferenceServerException:  # NOTE: between unloading the old config and loading the new
            return False
        steps = {s["model_name"]: int(s["model_version"]) for s in config["ensemble_scheduling"]["step"]}
        if steps != one.pins or not triton.http.is_model_ready(one.name, str(version)):
            return False
        got = {protocol: answers(url, one, protocol) for protocol, url in urls(triton).items()}
        return all(a is not None and np.allclose(a, one.native, rtol=0, atol=ATOL) for a in got.values())

    for kind, one in second.items():
        assert one.pins != first[kind].pins
        assert np.abs(one.native - first[kind].native).max() > 1e-3, "the two versions must answer apart"
        wait_for(lambda one=one: serves(one, 2), 60, f"Triton serving {one.name}:2 on its steps")
    for one in first.values():
        rollback(repository, one.name, champion_config, reason="the second version misbehaves")
        wait_for(lambda one=one: serves(one, 1), 60, f"Triton serving {one.name}:1 again on its steps")
        assert not triton.http.is_model_ready(one.name, "2")
