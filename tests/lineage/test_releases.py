"""Release state: promote, rollback, the history, races between promotions, and config.pbtxt's
version_policy following the champion, on a local folder and on S3 (moto)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache

import numpy as np
import pytest
import treelite
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.api import describe_releases
from tritonflow.lineage import layout
from tritonflow.lineage.errors import RepositoryError, TritonflowError
from tritonflow.lineage.releases import (
    ReleaseConflict,
    ReleaseError,
    promote,
    read_state,
    rollback,
    set_canary,
    set_shadow,
)
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.model_config import (
    ConfigSpec,
    TensorSpec,
    build_config,
    check_config,
    parse_config,
    render,
    served_versions,
)
from tritonflow.serving.release_policy import champion_config

MODEL = "m"
CONFIG = render(
    build_config(
        ConfigSpec(
            name=MODEL,
            backend="fil",
            inputs=(TensorSpec("input__0", "FP32", (4,)),),
            outputs=(TensorSpec("output__0", "FP32", (2,)),),
            max_batch_size=64,
            max_queue_delay_us=100,
            parameters={
                "model_type": "treelite_checkpoint",
                "is_classifier": "true",
                "predict_proba": "true",
                "threshold": "0.5",
            },
        )
    )
)


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest) -> ModelRepository:
    return ModelRepository(request.getfixturevalue("s3_bucket" if request.param == "s3" else "local_repo"))


@cache
def checkpoint() -> bytes:
    """A real forest on CONFIG's signature: promote, canary and shadow load a version before they
    write (4 features, 2 classes)."""
    X, y = make_classification(64, 4, random_state=0)
    forest = RandomForestClassifier(3, max_depth=3, random_state=0).fit(X.astype(np.float32), y)
    return treelite.sklearn.import_model(forest).serialize_bytes()


def publish(repo: ModelRepository, make_record, n: int) -> None:
    files = {"checkpoint.tl": checkpoint()}
    for _ in range(n):
        repo.publish(MODEL, CONFIG, files, lambda v: make_record(MODEL, v, files=files), {"run": "r"})


def served(repo: ModelRepository) -> list[int]:
    """What Triton's version_policy in the repository's config.pbtxt serves, checked as the node checks it."""
    config = check_config(repo.read_config(MODEL), model_name=MODEL)
    return served_versions(config, repo.versions(MODEL))


def test_promote_rollback_and_the_history(repo, make_record, monkeypatch):
    monkeypatch.setenv("METAFLOW_USER", "alice")
    publish(repo, make_record, 3)
    assert served(repo) == [3]  # latest 1, as @deploy writes it
    assert read_state(repo, MODEL).champion is None

    promote(repo, MODEL, 1, champion_config, reason="baseline")
    assert served(repo) == [1]
    _, event = promote(
        repo, MODEL, 3, champion_config, reason="beats v1", evaluation={"roc_auc": [0.91, 0.88]}
    )
    assert event is not None and (event.seq, event.previous, event.who) == (2, 1, "alice")
    assert served(repo) == [3]

    # every field but the version_policy is what @deploy wrote
    before, after = parse_config(CONFIG), parse_config(repo.read_config(MODEL))
    before.ClearField("version_policy")
    after.ClearField("version_policy")
    assert after == before

    state, event = rollback(repo, MODEL, champion_config, reason="alerts")
    assert (event.kind, event.version, event.previous, event.reason) == ("rollback", 1, 3, "alerts")
    assert state.champion == 1 and served(repo) == [1]
    state = read_state(repo, MODEL)  # what another process reads back
    assert [(e.seq, e.kind, e.version, e.previous) for e in state.events] == [
        (1, "promote", 1, None),
        (2, "promote", 3, 1),
        (3, "rollback", 1, 3),
    ]
    assert state.events[1].evaluation == {"roc_auc": [0.91, 0.88]}
    assert state.events[0].when.endswith("Z") and state.events[0].reason == "baseline"
    with pytest.raises(ReleaseError, match="no previous champion to roll back to .v1 is the first champion"):
        rollback(repo, MODEL, champion_config)
    assert len(read_state(repo, MODEL).events) == 3


def test_rolling_back_twice_goes_two_decisions_back(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 3)
    for version in (1, 2, 3):
        promote(repo, MODEL, version, champion_config, reason=f"v{version}")
    assert [rollback(repo, MODEL, champion_config)[0].champion for _ in range(2)] == [2, 1]
    with pytest.raises(ReleaseError, match="no previous champion"):
        rollback(repo, MODEL, champion_config)


def test_a_decision_against_a_champion_conflicts_only_once_another_took_over(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 3)
    # NOTE: decided against v2 while `latest 1` served it and the log was empty: nothing replaced it
    _, event = promote(repo, MODEL, 3, champion_config, replacing=2)
    assert event is not None and read_state(repo, MODEL).champion == 3
    with pytest.raises(ReleaseConflict, match=r"decision to promote v1 over v2: .*nothing was written"):
        promote(repo, MODEL, 1, champion_config, replacing=2)
    assert [e.version for e in read_state(repo, MODEL).events] == [3] and served(repo) == [3]


def test_canary_and_shadow_live_beside_the_champion_and_config_serves_only_the_champion(repo, make_record):
    publish(repo, make_record, 4)
    promote(repo, MODEL, 1, champion_config, reason="baseline")
    set_canary(repo, MODEL, 2, 10, champion_config, reason="try v2")
    state, event = set_shadow(repo, MODEL, 3, champion_config, reason="watch v3")
    assert (state.champion, state.canary, state.percent, state.shadow) == (1, 2, 10.0, 3)
    assert [state.role(v) for v in (1, 2, 3, 4)] == ["champion", "canary", "shadow", None]
    assert event.change() == "v3 became shadow"
    assert served(repo) == [1]  # NOTE: stock Triton would send every unversioned request to a served v2

    state, _ = set_canary(repo, MODEL, 2, 50, champion_config, reason="more")
    assert (state.canary, state.percent) == (2, 50.0)
    state, event = promote(repo, MODEL, 2, champion_config, reason="canary held up")
    assert (state.champion, state.canary, state.percent, state.shadow) == (2, None, 0.0, 3)  # it ended
    state, _ = rollback(repo, MODEL, champion_config, reason="no")
    assert (state.champion, state.canary, state.shadow) == (1, None, 3)
    state, event = set_shadow(repo, MODEL, None, champion_config)
    assert state.shadow is None and event.change() == "the shadow was stopped"

    state = read_state(repo, MODEL)  # as another process reads it
    assert [e.kind for e in state.events] == [
        "promote",
        "canary",
        "shadow",
        "canary",
        "promote",
        "rollback",
        "shadow",
    ]
    assert [e.change() for e in state.history(2)] == [
        "v2 became canary for 10% of unversioned requests",
        "v2 became canary for 50% of unversioned requests",
        "v2 was promoted",
        "v2 was rolled back to v1",
    ]
    assert [e.seq for e in state.history(3)] == [3, 7]
    assert state.history(4) == []


def test_canary_and_shadow_refuse_bad_input_and_write_nothing(repo, make_record):
    publish(repo, make_record, 2)
    with pytest.raises(ReleaseError, match="has no champion yet, so no canary beside it"):
        set_canary(repo, MODEL, 2, 10, champion_config)
    promote(repo, MODEL, 1, champion_config, reason="x")
    for percent in (-1, 100.5, float("nan"), "10"):
        with pytest.raises(ReleaseError, match="a canary share is a percentage from 0 to 100, not "):
            set_canary(repo, MODEL, 2, percent, champion_config)
    with pytest.raises(ReleaseError, match="m:1 is the champion: a shadow is another version"):
        set_shadow(repo, MODEL, 1, champion_config)
    with pytest.raises(ReleaseError, match="cannot make m:7 canary: no deployment m:7"):
        set_canary(repo, MODEL, 7, 10, champion_config)
    with pytest.raises(ReleaseError, match="'m' has no canary to stop"):
        set_canary(repo, MODEL, None, 0, champion_config)
    with pytest.raises(ReleaseError, match="'m' has no shadow to stop"):
        set_shadow(repo, MODEL, None, champion_config)
    assert len(read_state(repo, MODEL).events) == 1


def test_unpublished_missing_and_damaged_versions_are_refused_before_anything_is_written(repo, make_record):
    publish(repo, make_record, 2)
    repo.claim_version(MODEL, {})
    repo.store.write(f"{MODEL}/3/checkpoint.tl", b"half a deploy")  # files, no deployment.json yet
    repo.store.write(layout.record_key(MODEL, 2), b"{not json")
    for version, message in (
        (
            3,
            r"cannot make m:3 champion: it is not published \(its folder has no deployment.json"
            r".*published: \[1, 2\]$",
        ),
        (9, r"cannot make m:9 champion: no deployment m:9 .*known versions of 'm': \[1, 2\]"),
        (2, r"cannot make m:2 champion, its record does not read: .*deployment.json is not valid JSON"),
    ):
        with pytest.raises(ReleaseError, match=message):
            promote(repo, MODEL, version, champion_config, reason="no")
    with pytest.raises(ReleaseError, match="no version was promoted yet"):
        rollback(repo, MODEL, champion_config)
    assert repo.store.list(layout.releases_prefix(MODEL)) == []
    assert repo.read_config(MODEL) == CONFIG


def test_a_config_the_node_would_refuse_refuses_the_promotion(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 1)
    broken = CONFIG.replace('string_value: "true"', 'string_value: "True"')
    repo.store.write(layout.config_key(MODEL), broken.encode())
    with pytest.raises(
        TritonflowError,
        match=r"config.pbtxt is not a valid Triton model config \(line \d+: error: .*nothing was changed",
    ):
        promote(repo, MODEL, 1, champion_config, reason="x")
    assert repo.store.list(layout.releases_prefix(MODEL)) == []


def test_a_crash_between_the_event_and_the_config_is_repaired_by_the_next_command(repo, make_record):
    publish(repo, make_record, 2)
    promote(repo, MODEL, 1, champion_config, reason="x")
    repo.store.write(layout.config_key(MODEL), CONFIG.encode())  # the config as it was before the event
    assert served(repo) == [2]
    assert describe_releases(repo, MODEL)["config_drift"] == (
        f"config.pbtxt serves [2], not the champion v1 (a command was interrupted): "
        f"`tritonflow promote {repo.given} m:1` repairs it"
    )
    state, event = promote(repo, MODEL, 1, champion_config, reason="again")
    assert event is None and len(state.events) == 1  # no second decision for the same champion
    assert served(repo) == [1] and describe_releases(repo, MODEL)["config_drift"] is None


def test_a_broken_history_is_an_error_naming_the_file(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 2)
    promote(repo, MODEL, 1, champion_config, reason="x")
    promote(repo, MODEL, 2, champion_config, reason="y")
    repo.store.delete(layout.release_key(MODEL, 1))
    with pytest.raises(
        RepositoryError, match=r"00000002.json breaks the release history of 'm' \(expected event 1\)"
    ):
        read_state(repo, MODEL)


# -- concurrency: two processes promoting at once ----------------------------------------------------
PROMOTER = """
import sys, time
from pathlib import Path
from tritonflow.lineage.releases import ReleaseConflict, promote
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.release_policy import champion_config

uri, gate, version = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
repo = ModelRepository(uri)
create = repo.store.create

def create_after_both_read(key, data):
    # NOTE: a barrier, not a fake: both processes have read the state before either writes its event
    (gate / f"read-{version}").touch()
    while len(list(gate.glob("read-*"))) < 2:
        time.sleep(0.001)
    return create(key, data)

repo.store.create = create_after_both_read
try:
    promote(repo, "m", version, champion_config, reason=f"v{version} by process")
except ReleaseConflict as exc:
    print(f"conflict: {exc}")
else:
    print("won")
"""


def test_concurrent_promotions_one_wins_the_other_gets_a_conflict(repo, make_record, tmp_path):
    publish(repo, make_record, 3)
    promote(repo, MODEL, 1, champion_config, reason="start")
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = {
        v: subprocess.Popen(
            [sys.executable, "-c", PROMOTER, repo.uri, str(gate), str(v)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "METAFLOW_USER": f"user{v}"},
        )
        for v in (2, 3)
    }
    outs = {v: p.communicate(timeout=60) for v, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), {v: err for v, (_, err) in outs.items()}
    said = {v: out.strip() for v, (out, _) in outs.items()}
    winner = next(v for v, text in said.items() if text == "won")
    loser = 5 - winner
    assert said[loser] == (
        f"conflict: model 'm' changed while you promoted: v{winner} was promoted by user{winner} at "
        f"{read_state(repo, MODEL).events[1].when} ('v{winner} by process'); "
        "nothing of yours was written: run the command again"
    )
    state = read_state(repo, MODEL)
    assert [(e.seq, e.version, e.previous, e.who) for e in state.events] == [
        (1, 1, None, os.environ.get("METAFLOW_USER") or state.events[0].who),
        (2, winner, 1, f"user{winner}"),
    ]
    assert served(repo) == [winner]


# -- the commands --------------------------------------------------------------------------------------
def tritonflow(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METAFLOW_USER": "carol"}
    return subprocess.run(
        [sys.executable, "-m", "tritonflow", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_commands_promote_list_and_roll_back(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 2)
    root = str(local_repo)
    listed = json.loads(tritonflow("releases", root, MODEL, "--json").stdout)
    assert (listed["champion"], [v["role"] for v in listed["versions"]]) == (None, ["challenger", "serving"])

    done = tritonflow("promote", root, f"{MODEL}:1", "--reason", "safer")
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"m:1 is now the champion in {repo.uri} (was no champion)",
    )
    done = tritonflow("promote", root, f"{MODEL}:2", "--reason", "better")
    assert done.returncode == 0, done.stderr
    listed = json.loads(tritonflow("releases", root, MODEL, "--json").stdout)
    assert listed["schema"] == "tritonflow.releases/v1" and listed["config_drift"] is None
    assert [(v["version"], v["role"], v["deployment_id"]) for v in listed["versions"]] == [
        (1, "challenger", "m:1@TrainFlow/1795314379884117"),
        (2, "champion", "m:2@TrainFlow/1795314379884117"),
    ]
    assert [(e["version"], e["who"], e["reason"]) for e in listed["history"]] == [
        (1, "carol", "safer"),
        (2, "carol", "better"),
    ]
    text = tritonflow("releases", root, MODEL).stdout
    # NOTE: a made-up run, in no Metaflow metadata: its status is unknown
    assert re.search(
        r"\n2 +champion +m:2@TrainFlow/1795314379884117 +TrainFlow/1795314379884117 +unknown\n", text
    ), text
    assert re.search(r"\n +2  \S+Z  v2 was promoted  by carol  'better'\n", text), text

    done = tritonflow("rollback", root, MODEL, "--reason", "alerts")
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"m:1 is the champion again in {repo.uri} (rolled back from v2)",
    )
    assert served(repo) == [1]


def test_canary_and_shadow_commands(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 3)
    root = str(local_repo)
    assert tritonflow("promote", root, f"{MODEL}:1", "--reason", "base").returncode == 0
    done = tritonflow("canary", root, f"{MODEL}:2", "--percent", "10", "--reason", "try")
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"m:2 now answers 10% of unversioned requests of m in {repo.uri} (champion v1); "
        "`tritonflow serve` follows it, stock Triton serves only the champion",
    )
    done = tritonflow("shadow", root, f"{MODEL}:3")
    assert done.returncode == 0 and done.stdout.startswith("m:3 now sees a copy of the requests v1 answers")
    listed = json.loads(tritonflow("releases", root, MODEL, "--json").stdout)
    assert (listed["canary"], listed["shadow"]) == ({"version": 2, "percent": 10.0}, 3)
    assert [v["role"] for v in listed["versions"]] == ["champion", "canary", "shadow"]
    text = tritonflow("releases", root, MODEL).stdout
    assert (
        re.search(r"\n2 +canary 10% +m:2@", text)
        and "v2 became canary for 10% of unversioned requests" in text
    )
    assert served(repo) == [1]
    lineage = tritonflow("lineage", f"{MODEL}:2", "--repository", root, "--json", "--no-metaflow")
    release = json.loads(lineage.stdout)["release"]
    assert release["role"] == "canary" and [
        (e["seq"], e["who"], e["reason"]) for e in release["history"]
    ] == [(2, "carol", "try")]
    text = tritonflow("lineage", f"{MODEL}:3", "--repository", root, "--no-metaflow").stdout
    assert re.search(r"\nReleases\n  role +shadow\n  \S+Z +v3 became shadow by carol\n", text), text

    for args, message in (
        (("canary", root, f"{MODEL}:2", "--percent", "120"), "a canary share is a percentage from 0 to 100"),
        (("canary", root, f"{MODEL}:2"), "give the canary's share: --percent P (0-100)"),
        (
            ("canary", root, f"{MODEL}:1", "--percent", "5"),
            "m:1 is the champion: a canary is another version",
        ),
        (("shadow", root, f"{MODEL}:9"), "cannot make m:9 shadow: no deployment m:9"),
        (("canary", root, f"{MODEL}:2", "--stop"), "--stop takes the model's name, not m:2"),
        (
            ("canary", root, f"{MODEL}:2", "--percent", "ten"),
            "argument --percent: invalid float value: 'ten'",
        ),
    ):
        done = tritonflow(*args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
    assert len(read_state(repo, MODEL).events) == 3

    assert tritonflow("canary", root, MODEL, "--stop").stdout.strip() == (
        f"m has no canary now in {repo.uri}; v1 answers as champion"
    )
    assert tritonflow("shadow", root, MODEL, "--stop").returncode == 0
    state = read_state(repo, MODEL)
    assert (state.canary, state.shadow, len(state.events)) == (None, None, 5)
    assert "has no shadow to stop" in tritonflow("shadow", root, MODEL, "--stop").stderr


def test_the_commands_fail_in_one_line_with_exit_2(local_repo, make_record):
    repo = ModelRepository(local_repo)
    publish(repo, make_record, 1)
    root = str(local_repo)
    cases = [
        (
            ("promote", root, "m:7", "--reason", "x"),
            "tritonflow promote: error: cannot make m:7 champion: no deployment",
        ),
        (("rollback", root, MODEL), "tritonflow rollback: error: 'm' has no previous champion"),
        (("rollback", root, "../m"), "tritonflow rollback: error: '../m' is not a valid Triton model name"),
        (("releases", root, "nope"), "tritonflow releases: error: model 'nope' has no config.pbtxt"),
        (("promote", root, "m:1@F/1", "--reason", "x"), "give MODEL:VERSION, not a full deployment ID: m:1"),
        (("releases", f"{root}/m", MODEL), "is a model folder (it has config.pbtxt): use its parent"),
    ]
    for args, message in cases:
        done = tritonflow(*args)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    publish(repo, make_record, 1)
    repo.store.write(f"{MODEL}/2/checkpoint.tl", b"overwritten")  # its record's sha256 no longer matches
    for args in (("promote", root, "m:2", "--reason", "x"), ("canary", root, "m:2", "--percent", "5")):
        done = tritonflow(*args)
        role = "champion" if args[0] == "promote" else "canary"
        assert done.returncode == 2, done.stderr
        assert f"cannot make m:2 {role}: it does not load as `tritonflow serve` loads it (" in done.stderr
        assert "checkpoint.tl" in done.stderr and "nothing was changed" in done.stderr, done.stderr
    missing_reason = tritonflow("promote", root, "m:1")
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    assert repo.store.list(layout.releases_prefix(MODEL)) == []
    for version in (2, 1):  # NOTE: written directly: the command refuses m:2 as its files stand now
        promote(repo, MODEL, version, champion_config)
    refused = tritonflow("rollback", root, MODEL)
    assert refused.returncode == 2 and "cannot make m:2 champion again: it does not load" in refused.stderr
    assert read_state(repo, MODEL).champion == 1 and served(repo) == [1]
