"""Stock Triton obeys the release decisions: after each promote and rollback, Triton in poll mode
serves exactly the champion, and never the canary or the shadow (only `tritonflow serve` splits
traffic: config.pbtxt names the champion alone)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from servers import wait_for
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct

from tritonflow.lineage.releases import promote, read_state, rollback, set_canary, set_shadow
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.release_policy import champion_config

pytestmark = pytest.mark.slow

MODEL = "released-rf"


def served(triton, versions: range) -> set[int]:
    return {v for v in versions if triton.http.is_model_ready(MODEL, str(v))}


def unversioned_answer(triton, X: np.ndarray) -> str:
    tensor = httpclient.InferInput("input__0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return triton.http.infer(MODEL, [tensor]).get_response()["model_version"]


def test_triton_serves_exactly_the_champion(start_triton, tmp_path: Path):
    root = tmp_path / "repo"
    X, y = make_classification(400, 6, random_state=3)
    X = X.astype(np.float32)
    for seed in range(3):  # NOTE: promote="always": each deploy is champion in turn, 1 -> 2 -> 3
        deploy_direct(
            root,
            MODEL,
            RandomForestClassifier(5, max_depth=4, random_state=seed).fit(X, y),
            X,
            str(700 + seed),
        )
    repo = ModelRepository(str(root))
    assert read_state(repo, MODEL).champions == [1, 2, 3]
    triton = start_triton(root)
    triton.wait_ready(MODEL, 3)
    versions = range(1, 4)

    def serves_only(champion: int) -> None:
        wait_for(lambda: served(triton, versions) == {champion}, 30, f"Triton serving only v{champion}")
        assert unversioned_answer(triton, X[:4]) == str(champion)

    serves_only(3)
    promote(repo, MODEL, 1, champion_config, reason="back to the first")
    serves_only(1)
    config = repo.read_config(MODEL)
    set_canary(repo, MODEL, 2, 50, champion_config, reason="try v2")
    set_shadow(repo, MODEL, 3, champion_config, reason="watch v3")
    assert repo.read_config(MODEL) == config  # NOTE: nothing for Triton to reload
    time.sleep(triton.POLL_SECS * 3)  # NOTE: polls in which a wrong config would have loaded v2, v3
    serves_only(1)  # NOTE: a canary in the config would take every unversioned request here
    rollback(repo, MODEL, champion_config, reason="alerts")
    assert read_state(repo, MODEL).champion == 3
    serves_only(3)
