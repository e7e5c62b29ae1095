"""The benchmark's peers for real: each environment made (or reused) by benchmarks/peers/, the peer
started on the starter-size model, and its answers over HTTP compared with the native predict_proba.

The first run installs each peer (1-2 minutes apiece, cached under ~/.cache/tritonflow/peers/); a peer
whose packages cannot be installed here (no network) is skipped with pip's reason.
"""

from __future__ import annotations

import http.client
import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import PEERS, environment, parse  # noqa: E402
from peers.contenders import left_out, wrong_answer  # noqa: E402
from serving_contenders import running  # noqa: E402
from serving_models import BenchModel, train  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def starter() -> BenchModel:
    return train("starter-rf", quick=True)


@pytest.fixture(scope="module")
def other(starter: BenchModel) -> BenchModel:
    """Another forest on the same rows: a peer serving `starter` must be found to disagree with it."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(1)
    X, y = rng.random((2_000, starter.rows.shape[1])), rng.integers(0, 2, 2_000)
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=1).fit(X, y)
    return BenchModel("other", "another forest", forest, starter.rows)


def made(name: str) -> Path:
    module = importlib.import_module(f"peers.{name}")
    try:
        return environment.ensure(name, module.REQUIREMENTS)
    except environment.PeerUnavailable as exc:
        pytest.skip(f"{name} cannot be installed here: {exc}")


@pytest.mark.parametrize("name", PEERS)
def test_peer_serves_the_native_probabilities(
    name: str, starter: BenchModel, other: BenchModel, tmp_path: Path
) -> None:
    python = made(name)
    stamp = python.parents[1] / environment.COMPLETE
    before = stamp.stat().st_mtime_ns
    assert environment.ensure(name, importlib.import_module(f"peers.{name}").REQUIREMENTS) == python
    assert stamp.stat().st_mtime_ns == before, "a second set-up reuses the environment"
    assert environment.facts(name)["size_mb"] > 0

    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(starter.estimator))
    contender = importlib.import_module(f"peers.{name}").contender(starter, pickled, tmp_path, python)
    with running([contender]):
        assert left_out([contender], starter) == [], contender.problem
        assert contender.form is not None
        rows = starter.rows[:16]
        connection = http.client.HTTPConnection("127.0.0.1", contender.port, timeout=60)
        connection.request(
            "POST", contender.form.path, contender.form.encode(rows), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200
        answer = contender.form.decode(response.read())
        np.testing.assert_allclose(answer, starter.estimator.predict_proba(rows), atol=1e-6)
        assert "differ" in wrong_answer(contender, other), "the check must catch another model's answers"


def test_a_peer_that_does_not_start_is_reported_not_fatal(starter: BenchModel, tmp_path: Path) -> None:
    python = made("kserve")
    missing = tmp_path / "missing.pkl"
    contender = importlib.import_module("peers.kserve").contender(starter, missing, tmp_path, python)
    with running([contender]):
        assert left_out([contender], starter) == [contender]
    assert contender.problem.startswith("did not start") and "missing.pkl" in contender.problem


def test_peers_option() -> None:
    assert parse("all") == PEERS and parse("none") == ()
    assert parse("mlserver, kserve") == ("mlserver", "kserve")
    with pytest.raises(ValueError, match="unknown peer.*seldon"):
        parse("mlserver,seldon")
