"""The node's model config JSON is the document Triton 24.10 returns for the same repository.

Triton completes every config it loads (names, defaults, normalised settings) even with
auto-complete off, and prints every field without presence at its default; clients such as
`get_model_config()` read that document. The repository holds configs as @deploy writes them and
hand-trimmed ones that leave Triton to fill in the instance group, batching and version policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import Server
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from test_triton_compat import deploy_direct

from tritonflow.serving.model_config import parse_config, render

pytestmark = pytest.mark.slow

# (path, why the value may differ); the keys may not.
DIFFERENCES = {
    # NOTE: Triton here runs the Python-based fil backend ("model.py"); the node names the C++
    # backend library a Triton with the native FIL backend loads.
    ("runtime",): "backend-specific: the library or script Triton loaded",
}


def trimmed(repository: Path, model: str, **instance_group: Any) -> None:
    """Leave out what Triton fills in: name, version policy, batching settings, instance group."""
    path = repository / model / "config.pbtxt"
    config = parse_config(path.read_text())
    for name in ("name", "version_policy", "dynamic_batching", "instance_group"):
        config.ClearField(name)
    if instance_group:
        config.instance_group.add(**instance_group)
    path.write_text(render(config))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton-config") / "repo"
    X, y = make_classification(400, 8, n_classes=3, n_informative=5, random_state=5)
    X = X.astype(np.float32)
    labels = np.array(["fraud", "ok", "review"])[y]
    deploy_direct(repo, "labelled-rf", RandomForestClassifier(10, max_depth=5).fit(X, labels), X, "501")
    X, y = make_regression(400, 6, random_state=6)
    X = X.astype(np.float32)
    for name in ("price", "bare", "auto"):
        deploy_direct(repo, name, RandomForestRegressor(10, max_depth=5).fit(X, y), X, "601")
    trimmed(repo, "bare")
    trimmed(repo, "auto", kind="KIND_AUTO", count=0)
    return repo


MODELS = ("labelled-rf", "price", "bare", "auto")


@pytest.fixture(scope="module")
def triton(start_triton: Any, repository: Path) -> Any:
    server = start_triton(repository)
    for model in MODELS:
        server.wait_ready(model, 1)
    return server


@pytest.fixture(scope="module")
def node(serve_module: Any, repository: Path) -> Server:
    return serve_module(repository)


def differences(ours: Any, theirs: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every place the two JSON documents differ, but values at DIFFERENCES' paths."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [
            f"{'/'.join(path + (k,))}: only in {'ours' if k in ours else 'Triton'}"
            for k in ours.keys() ^ theirs.keys()
        ]
        return found + [
            d for k in ours.keys() & theirs.keys() for d in differences(ours[k], theirs[k], path + (k,))
        ]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [
            d
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for d in differences(a, b, path + (str(i),))
        ]
    if ours != theirs and path not in DIFFERENCES:
        return [f"{'/'.join(path)}: ours {ours!r}, Triton {theirs!r}"]
    return []


@pytest.mark.parametrize("model", MODELS)
def test_config_json_is_tritons(triton: Any, node: Server, model: str) -> None:
    ours, theirs = node.client.get_model_config(model), triton.http.get_model_config(model)
    assert differences(ours, theirs) == []
    assert node.client.get_model_config(model, "1") == ours  # the version's endpoint answers the same


def test_trimmed_configs_get_tritons_defaults(node: Server) -> None:
    """What the comparison covers: Triton filled these in, and the node answers them too."""
    bare, auto = node.client.get_model_config("bare"), node.client.get_model_config("auto")
    assert bare["name"] == "bare" and bare["version_policy"] == {"latest": {"num_versions": 1}}
    assert "dynamic_batching" not in bare
    assert [(g["name"], g["kind"], g["count"]) for g in bare["instance_group"]] == [("bare", "KIND_CPU", 1)]
    assert [(g["name"], g["kind"], g["count"]) for g in auto["instance_group"]] == [("auto_0", "KIND_CPU", 1)]
    assert bare["optimization"]["input_pinned_memory"] == {"enable": True}
