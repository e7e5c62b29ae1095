"""@deploy(promote=...): a deploy no longer undoes a promotion. Publish-level tests run the plugin's own
`deploy` on a real local repository; the flow test runs real Metaflow runs in subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from tritonflow.lineage import layout, releases
from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin import promotion
from tritonflow.plugin.options import PromoteRule, parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.model_config import parse_config, render, served_versions
from tritonflow.serving.release_policy import champion_config

PROMOTE_FLOW = Path(__file__).parent / "flows" / "promote_flow.py"
FORESTS = {"fair": (3, 1), "shuffled": (3, 1), "good": (40, 6)}  # as promote_flow.py trains them


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 6)).astype("float32")
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X[:800], y[:800], X[800:], y[800:]


def forest(quality: str) -> RandomForestClassifier:
    X, y, _, _ = data()
    trees, depth = FORESTS[quality]
    y = np.random.default_rng(1).permutation(y) if quality == "shuffled" else y
    return RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=0).fit(X, y)


def publish(root: Path, quality: str, run: str, labels: Any = None, **attributes: Any) -> DeploymentRecord:
    """As @deploy publishes, without a flow (the record names a made-up run)."""
    _, _, X_val, y_val = data()
    opts = parse_options(
        {"name": "fraud", "repository": str(root), "sample": "X_val", "labels": "y_val", **attributes},
        "PromoteFlow",
        is_join=False,
    )
    meta = {"flow": "PromoteFlow", "run_id": run, "task": f"PromoteFlow/{run}/train/1"}
    return deploy(
        forest(quality),
        opts,
        sample=X_val,
        provenance=Provenance(metaflow=meta),
        sample_name="X_val",
        sample_labels=y_val if labels is None else labels,
    )


def serving(root: Path) -> list[int]:
    """The versions config.pbtxt serves, as the node's registry and Triton read its version_policy."""
    repo = ModelRepository(root)
    return served_versions(parse_config(repo.read_config("fraud")), repo.versions("fraud"))


def listing(root: Path) -> dict[str, str | None]:
    store = ModelRepository(root).store
    return {f.key: store.fingerprint(f.key) for f in store.walk("fraud")}


def test_never_publishes_a_challenger_and_the_champion_keeps_serving(tmp_path: Path, serve: Any) -> None:
    first = publish(tmp_path, "fair", "1", promote="never")
    assert first.release is not None and first.release["promoted"] is True  # no champion yet: promoted
    assert serving(tmp_path) == [1]

    challenger = publish(tmp_path, "good", "2", promote="never")
    assert challenger.release == {
        "promote": "never",
        "promoted": False,
        "champion": 1,
        "reason": "published as a challenger, v1 stays champion",
        "evaluation": None,
        "pending": False,
    }
    # NOTE: the record describes config.pbtxt as the deploy wrote it (serving v1), not as generated
    assert challenger.config["version_policy"] == {"specific": [1]}
    assert challenger.config["sha256"] == sha256_hex((tmp_path / "fraud" / "config.pbtxt").read_bytes())
    assert first.config["version_policy"] == {"latest": 1}  # no champion yet; its promote event followed
    state = releases.read_state(ModelRepository(tmp_path), "fraud")
    assert (state.champion, len(state.events)) == (1, 1)
    assert serving(tmp_path) == [1]  # published, but unversioned requests still get v1
    node = serve(tmp_path)
    node.wait_for_state("fraud", 1, "READY")
    rows = data()[2][:2].tolist()
    body = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 6], "data": rows}]}
    assert node.json("POST", "/v2/models/fraud/infer", body)["model_version"] == "1"
    assert node.index_row("fraud", 2).get("state") != "READY"
    node.stop()

    publish(tmp_path, "good", "3")  # the default, promote="always": today's behaviour
    state = releases.read_state(ModelRepository(tmp_path), "fraud")
    assert (state.champions, state.events[-1].reason) == ([1, 3], "@deploy promote=always")
    assert serving(tmp_path) == [3]


def test_a_model_published_before_releases_keeps_the_version_latest_1_served(tmp_path: Path) -> None:
    publish(tmp_path, "fair", "1")
    repo = ModelRepository(tmp_path)
    for name in repo.store.list(layout.releases_prefix("fraud")):  # as @deploy left a model before releases
        os.remove(tmp_path / layout.releases_prefix("fraud") / name)
    config = parse_config(repo.read_config("fraud"))
    config.ClearField("version_policy")
    config.version_policy.latest.num_versions = 1
    (tmp_path / "fraud" / "config.pbtxt").write_text(render(config))

    publish(tmp_path, "good", "2", promote="never")
    state = releases.read_state(repo, "fraud")
    assert [(e.version, e.previous) for e in state.events] == [(1, None)]  # v1's standing written down
    assert serving(tmp_path) == [1]


def test_if_better_promotes_only_a_strictly_better_model(tmp_path: Path) -> None:
    publish(tmp_path, "fair", "1", promote="if_better:log_loss")
    worse = publish(tmp_path, "shuffled", "2", promote="if_better:log_loss")
    same = publish(tmp_path, "fair", "3", promote="if_better:log_loss")
    better = publish(tmp_path, "good", "4", promote="if_better:log_loss")

    assert worse.release is not None and same.release is not None and better.release is not None
    scores = worse.release["evaluation"]
    assert scores["metric"] == "log_loss" and scores["rows"] == 400 and scores["champion"]["version"] == 1
    assert scores["new"] > scores["champion"]["score"]  # lower is better for log_loss
    assert not worse.release["promoted"]
    assert worse.release["reason"] == (
        f"log_loss {scores['new']:.4g} > champion v1's {scores['champion']['score']:.4g}"
    )
    # NOTE: the same forest scores the same: not strictly better, so the champion stays
    assert not same.release["promoted"] and same.release["evaluation"]["new"] == scores["champion"]["score"]
    assert better.release["promoted"] and better.release["evaluation"]["champion"]["version"] == 1
    state = releases.read_state(ModelRepository(tmp_path), "fraud")
    assert state.champions == [1, 4] and state.events[-1].evaluation == better.release["evaluation"]
    assert serving(tmp_path) == [4]


def test_a_promotion_landing_while_a_deploy_scores_wins(tmp_path: Path, monkeypatch: Any) -> None:
    publish(tmp_path, "fair", "1")
    publish(tmp_path, "good", "2", promote="never")
    repo = ModelRepository(tmp_path)
    decide = promotion.decide

    def decide_then_someone_promotes(*args: Any) -> promotion.Decision:
        decision = decide(*args)
        releases.promote(repo, "fraud", 2, champion_config, reason="by hand", replacing=1)
        return decision

    # NOTE: the real decide, then a real promotion, between the scoring and settle
    monkeypatch.setattr(promotion, "decide", decide_then_someone_promotes)
    late = publish(tmp_path, "good", "3", promote="if_better:log_loss")

    assert late.release is not None and (late.release["promoted"], late.release["champion"]) == (True, 1)
    state = releases.read_state(repo, "fraud")
    assert (state.champions, state.events[-1].reason) == ([1, 2], "by hand")
    assert serving(tmp_path) == [2]
    line = promotion.describe(late)
    assert line.startswith("fraud:3 not promoted (promote=if_better:log_loss): log_loss "), line
    assert "; but v2 became champion while this deploy scored (the decision was against v1)" in line
    assert f"`tritonflow promote {repo.uri} fraud:3 --reason ...`" in line


def test_a_retried_task_settles_what_a_crash_left_undone(tmp_path: Path) -> None:
    publish(tmp_path, "fair", "1")
    publish(tmp_path, "good", "2")
    repo = ModelRepository(tmp_path)
    # NOTE: as a crash between the publish and its promote event leaves it: the config serves v1
    os.remove(tmp_path / layout.release_key("fraud", 2))
    releases.apply_state(repo, releases.read_state(repo, "fraud"), champion_config)
    assert serving(tmp_path) == [1]

    again = publish(tmp_path, "good", "2")  # the same task and files: its record back, settled now
    assert (again.version, repo.versions("fraud")) == (2, [1, 2])
    assert releases.read_state(repo, "fraud").champions == [1, 2] and serving(tmp_path) == [2]
    assert promotion.describe(again) == "fraud:2 promoted (promote=always)"

    releases.rollback(repo, "fraud", champion_config, reason="v2 misbehaves")
    publish(tmp_path, "good", "2")  # NOTE: a later event replaced it: a retry does not undo that
    state = releases.read_state(repo, "fraud")
    assert (state.champion, len(state.events)) == (1, 3) and serving(tmp_path) == [1]


@pytest.mark.parametrize(
    ("labels", "attributes", "message"),
    [
        (np.zeros(7, dtype=int), {}, "labels has 7 values but the sample has 400 rows"),
        (None, {"promote": "if_better:rmse"}, "rmse does not score a classifier"),
        (np.full(400, 5), {}, "labels hold ['5'], which the model does not predict"),
    ],
)
def test_if_better_refuses_labels_it_cannot_score_and_publishes_nothing(
    tmp_path: Path, labels: Any, attributes: dict[str, Any], message: str
) -> None:
    publish(tmp_path, "fair", "1")
    before = listing(tmp_path)
    with pytest.raises(TritonflowError, match=re.escape(message)):
        publish(tmp_path, "good", "2", labels=labels, **{"promote": "if_better:roc_auc", **attributes})
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"promote": "sometimes"}, "promote='sometimes' is not a promotion rule: use 'always'"),
        ({"promote": "if_better:auc"}, "with a metric of roc_auc, average_precision, log_loss, accuracy"),
        ({"promote": "never:x"}, "promote='never:x' is not a promotion rule"),
        ({"promote": "on_success:x"}, "use 'always' (the default), 'never', 'on_success' or"),
        ({"promote": "if_better:f1", "sample": "X_val"}, "also pass labels= (artifacts"),
        ({"promote": "if_better:f1"}, "also pass sample= and labels="),
        ({"labels": "y-val"}, "labels='y-val' must name an artifact"),
    ],
)
def test_promote_options_are_checked_at_decorator_time(attributes: dict[str, Any], message: str) -> None:
    with pytest.raises(TritonflowError, match=re.escape(message)):
        parse_options(attributes, "PromoteFlow", is_join=False)


def test_promote_rules_parse() -> None:
    opts = parse_options({"promote": "if_better:mae", "sample": "X", "labels": "y"}, "F", is_join=False)
    assert (opts.promote, opts.labels, opts.promote.higher_is_better) == (
        PromoteRule("if_better", "mae"),
        "y",
        False,
    )
    assert parse_options({}, "F", is_join=False).promote == PromoteRule("always")


@pytest.mark.slow
def test_three_flow_runs_promote_only_the_better_models(tmp_path: Path, metaflow_env: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    attributes = {"name": "fraud", "sample": "X_val", "labels": "y_val", "promote": "if_better:roc_auc"}
    env = {
        **os.environ,
        **metaflow_env,
        "TRITONFLOW_REPOSITORY": str(repo),
        "PROMOTE_DEPLOY": json.dumps(attributes),
    }
    logs = []
    for quality in ("fair", "shuffled", "good"):
        command = [sys.executable, str(PROMOTE_FLOW), "--no-pylint", "run", "--quality", quality]
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        logs.append(result.stdout + result.stderr)

    repository = ModelRepository(repo)
    assert repository.versions("fraud") == [1, 2, 3]  # all three published
    worse, better = repository.read_record("fraud", 2), repository.read_record("fraud", 3)
    assert worse.release is not None and better.release is not None
    low, high = worse.release["evaluation"], better.release["evaluation"]
    assert not worse.release["promoted"] and low["new"] < low["champion"]["score"]
    line = (
        f"@deploy: fraud:2 not promoted (promote=if_better:roc_auc): roc_auc {low['new']:.4g} < champion v1's"
    )
    assert line in logs[1]
    assert (
        better.release["promoted"]
        and high["new"] > high["champion"]["score"]
        and high["champion"]["version"] == 1
    )
    assert "@deploy: fraud:3 promoted (promote=if_better:roc_auc): roc_auc" in logs[2]
    state = releases.read_state(repository, "fraud")
    assert state.champions == [1, 3] and state.events[-1].evaluation == high
    assert served_versions(parse_config(repository.read_config("fraud")), [1, 2, 3]) == [3]


@pytest.mark.slow
def test_on_success_promotes_only_once_the_run_succeeded(
    tmp_path: Path, metaflow_env: dict[str, str]
) -> None:
    repo = tmp_path / "repo"
    env = {
        **os.environ,
        **metaflow_env,
        "TRITONFLOW_REPOSITORY": str(repo),
        "PROMOTE_DEPLOY": json.dumps({"name": "fraud", "promote": "on_success"}),
    }
    logs = []
    for quality, fail in (("fair", False), ("good", True), ("good", False)):
        command = [sys.executable, str(PROMOTE_FLOW), "--no-pylint", "run", "--quality", quality]
        command += ["--fail_at_end", "true"] if fail else []
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert (result.returncode != 0) == fail, (result.stdout + result.stderr)[-3000:]
        logs.append(result.stdout + result.stderr)

    repository = ModelRepository(repo)
    first, failed, good = (repository.read_record("fraud", v) for v in (1, 2, 3))
    assert first.release["promoted"] and not first.release["pending"]  # no champion yet: at once
    assert failed.release["pending"] and not failed.release["promoted"]
    assert f"@deploy: {failed.deployment_id} stays a challenger: its run is " in logs[1], logs[1][-2000:]
    assert f"@deploy: {good.deployment_id} is now the champion: its run finished successfully" in logs[2]
    state = releases.read_state(repository, "fraud")
    assert state.champions == [1, 3] and state.events[-1].reason == (
        f"@deploy promote=on_success: run {good.run_pathspec} finished successfully"
    )
    assert served_versions(parse_config(repository.read_config("fraud")), [1, 2, 3]) == [3]
    listed = subprocess.run(
        [sys.executable, "-m", "tritonflow", "releases", str(repo), "fraud", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    versions = json.loads(listed.stdout)["versions"]
    assert [(v["role"], v["run_status"]) for v in versions] == [
        ("challenger", "successful"),
        ("pending", "failed"),
        ("champion", "successful"),
    ], versions
