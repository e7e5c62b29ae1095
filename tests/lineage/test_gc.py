"""`tritonflow gc` on the leftovers of really killed deploys, on both stores (a local folder and a
real moto S3 server): each deploy is a subprocess that stops for good at a chosen point of its
publish and is then killed with SIGKILL, so the repository holds exactly what such a kill leaves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tritonflow.lineage import gc, layout
from tritonflow.lineage.records import DeploymentRecord, sha256_hex, utc_now
from tritonflow.lineage.releases import ReleaseEvent
from tritonflow.lineage.repository import ModelRepository
from tritonflow.lineage.store.local import TEMP
from tritonflow.lineage.store.s3 import S3Store

HERE = Path(__file__).resolve().parent
CONFIG = 'name: "m"\nbackend: "fil"\n'


def publish(repo: ModelRepository, model: str, run: str) -> DeploymentRecord:
    """The next version of `model`, as the run `run` of GcFlow publishes it (the model's own config)."""
    payload = f"{model} of run {run}".encode()
    config = repo.read_config(model) if model in repo.models() else CONFIG.replace('"m"', f'"{model}"')

    def make_record(version: int) -> DeploymentRecord:
        return DeploymentRecord(
            deployment_id=f"{model}:{version}@GcFlow/{run}",
            model_name=model,
            version=version,
            created_at=utc_now(),
            repository=repo.uri,
            files=[{"path": f"{version}/checkpoint.tl", "sha256": sha256_hex(payload), "size": len(payload)}],
            format="treelite",
            backend="fil",
            config={},
            signature={},
            triton_version="26.06",
            exporter={},
            metaflow={"flow": "GcFlow", "run_id": run, "task": f"GcFlow/{run}/train/1"},
        )

    return repo.publish(model, config, {"checkpoint.tl": payload}, make_record, {"run_id": run})


def publish_and_stop_at(point: str, uri: str, model: str, run: str, ready: str) -> None:
    """Run in the killed subprocess: publish, and at `point` say so in `ready` and wait for the kill.

    Points: "index" before the first index entry (a claim alone), "files" before the files (claim +
    index entries), "config" before config.pbtxt lands (locally inside `write`, whose temp file
    stays), "record" before deployment.json lands (every other file is there; locally in staging).
    Local only, inside `LocalStore.create` with its temp file written and not linked yet: "claim"
    (the version's claim), "event" (instead of a publish: a promotion of the model's highest version).
    """

    def stop(*_: Any, **__: Any) -> None:
        Path(ready).write_text(point)
        while True:
            signal.pause()

    repo = ModelRepository(uri)
    store = repo.store
    name = layout.CONFIG if point == "config" else layout.RECORD
    if point in ("claim", "event"):
        folder = layout.CLAIMS if point == "claim" else layout.RELEASES
        link = os.link
        os.link = lambda src, dst: stop() if Path(dst).parent.name == folder else link(src, dst)
        if point == "event":
            from tritonflow.lineage.releases import promote
            from tritonflow.serving.release_policy import champion_config

            promote(repo, model, max(repo.versions(model)), champion_config, reason="killed")
    elif point == "index":
        store.write = stop
    elif point == "files":
        store.publish = stop
    elif isinstance(store, S3Store):  # config.pbtxt and deployment.json are single puts there
        put = store._client.put_object
        store._client.put_object = lambda **kw: stop() if kw["Key"].endswith(f"/{name}") else put(**kw)
    elif point == "config":  # inside LocalStore.write: the temp file is written, not renamed yet
        replace = os.replace
        os.replace = lambda src, dst: stop() if Path(dst).name == name else replace(src, dst)
    else:  # inside LocalStore.publish: the other files are staged, deployment.json not yet
        write_bytes = Path.write_bytes
        Path.write_bytes = lambda path, data: stop() if path.name == name else write_bytes(path, data)
    publish(repo, model, run)
    raise SystemExit(f"the publish finished without reaching {point!r}")


def kill_deploy(repo: ModelRepository, model: str, point: str, tmp_path: Path) -> set[str]:
    """SIGKILL a deploy of `model` stopped at `point`; the keys it left."""
    before = keys(repo)
    ready = tmp_path / f"ready-{uuid.uuid4().hex}"
    code = "import sys, test_gc; test_gc.publish_and_stop_at(*sys.argv[1:])"
    child = subprocess.Popen(
        [sys.executable, "-c", code, point, repo.uri, model, uuid.uuid4().hex[:8], str(ready)],
        cwd=HERE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, f"the deploy exited before {point!r}: {child.communicate()[1]}"
            assert time.monotonic() < deadline, f"the deploy did not reach {point!r} in 60 s"
            time.sleep(0.02)
    finally:
        child.kill()
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return keys(repo) - before


def keys(repo: ModelRepository) -> set[str]:
    return {f.key for f in repo.store.walk("")}


def covered(findings: Iterable[str], repo_keys: set[str]) -> set[str]:
    """The files that finding keys stand for (a folder's: every file under it)."""
    found = list(findings)
    return {k for k in repo_keys if any(k == f or k.startswith(f + "/") for f in found)}


def removed(findings: list[gc.Finding]) -> list[str]:
    return [f.key for f in findings if f.remove]


def wait_for_a_later_second(repo: ModelRepository) -> float:
    """The newest modification time so far; returns once the store's clock stamps anything later.

    S3 listings give whole seconds, so pieces written from now on are strictly younger.
    """
    newest = max(f.modified for f in repo.store.walk(""))
    deadline = time.monotonic() + 30
    while time.time() < newest + 1.05:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return newest


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest) -> ModelRepository:
    return ModelRepository(request.getfixturevalue("s3_bucket" if request.param == "s3" else "local_repo"))


def test_gc_removes_exactly_what_killed_deploys_left(repo, tmp_path):
    publish(repo, "a", "1")
    publish(repo, "b", "1")
    old = set()
    for point in ("index", "files", "record"):  # a:2, a:3, a:4
        old |= kill_deploy(repo, "a", point, tmp_path)
    publish(repo, "a", "5")
    old |= kill_deploy(repo, "b", "files", tmp_path)  # b:2, the highest claim of b
    old |= kill_deploy(repo, "c", "config", tmp_path)  # c:1, a first deploy that never wrote its config
    assert {"a/.versions/2", "b/.versions/2", "c/.versions/1"} <= old
    assert any(k.startswith(("a/4/", "a/.staging-4-")) for k in old)  # files of a:4, no record
    boundary = wait_for_a_later_second(repo)
    young = kill_deploy(repo, "a", "record", tmp_path)  # a:6, "in progress"
    before = repo.store.walk("")
    tops = {"b/.versions/2", "c/.versions/1"}

    findings = gc.plan(repo, min_age=3600, now=boundary + 3600)
    assert repo.store.walk("") == before  # planning reads only
    assert covered(removed(findings), keys(repo)) == old - tops
    kept = {f.key: f.reason for f in findings if not f.remove}
    for top in tops:
        assert "highest claim" in kept[top] and "reuse version" in kept[top]
    young_kept = covered(kept, keys(repo)) - tops
    assert young_kept == young and all("younger than --min-age" in kept[k] for k in kept if k not in tops)
    if not isinstance(repo.store, S3Store):
        assert [f.reason for f in findings if "/.config.pbtxt." in f.key] == [
            "temp file of a write that was interrupted"
        ]

    done = gc.apply(repo, findings)
    assert done == findings
    assert keys(repo) == {f.key for f in before} - (old - tops)
    assert repo.models() == ["a", "b"] and repo.versions("a") == [1, 5] and repo.versions("b") == [1]
    assert repo.read_record("a", 5).deployment_id == "a:5@GcFlow/5"
    assert not [f for f in gc.plan(repo, min_age=3600, now=boundary + 3600) if f.remove]  # nothing left
    # the numbers of removed claims are not handed out again: the top claims held them
    assert [repo.claim_version(m, {}) for m in ("a", "b", "c")] == [7, 3, 2]


def test_a_record_that_appears_before_the_removal_keeps_its_version(repo, tmp_path):
    publish(repo, "a", "1")
    left = kill_deploy(repo, "a", "record", tmp_path)
    kill_deploy(repo, "a", "index", tmp_path)  # a:3 holds the highest claim, so a:2's claim is removable
    findings = gc.plan(repo, min_age=0)
    assert covered(removed(findings), keys(repo)) == left
    # the "killed" deploy was only slow: its record lands between the plan and the removal
    repo.store.publish(
        layout.version_key("a", 2), {"checkpoint.tl": b"x", layout.RECORD: b"{}"}, layout.RECORD
    )
    done = gc.apply(repo, findings)
    assert not [f for f in done if f.remove]
    assert {f.reason for f in done if f.key != "a/.versions/3"} == {
        "a/2/deployment.json appeared during gc: the deploy was still running"
    }
    assert left <= keys(repo)


def test_a_version_folder_without_a_claim_is_not_taken_for_a_leftover(repo):
    publish(repo, "a", "1")
    repo.store.write("a/7/model.onnx", b"copied in by hand")  # no claim: not a tritonflow publish
    repo.store.write("hand/config.pbtxt", b"hand")
    repo.store.write("hand/1/model.onnx", b"hand")  # a model that tritonflow never touched
    findings = gc.plan(repo, min_age=0)
    assert not [f for f in findings if f.remove]
    assert {f.key for f in findings} == {"a/7", "hand/1"}
    assert all("not published by tritonflow" in f.reason for f in findings)


# -- the command, as users run it --------------------------------------------------------------------
def tritonflow(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritonflow", *map(str, args)], capture_output=True, text=True
    )


def deploy_real_model(uri: str) -> tuple[Any, str]:
    """A real @deploy of a small forest; (a sample, its deployment ID)."""
    # NOTE: imported here, not at the top: each killed deploy imports this module and must start fast.
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    from tritonflow.plugin.options import parse_options
    from tritonflow.plugin.publish import Provenance, deploy

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype("float32")
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, X[:, 0])
    opts = parse_options({"name": "price", "repository": uri}, "PriceFlow", is_join=False)
    provenance = Provenance(metaflow={"flow": "PriceFlow", "run_id": "11", "task": "PriceFlow/11/train/2"})
    return X, deploy(model, opts, sample=X, provenance=provenance).deployment_id


def lines(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    """(action, key, reason) of each line of the command's output but the summary (the last)."""
    *findings, summary = result.stdout.splitlines()
    assert " leftover" in summary, result.stdout
    return [re.fullmatch(r"(would remove|removed|kept) +(\S+) +(.+)", line).groups() for line in findings]


def test_the_gc_command(repo, tmp_path, serve):
    X, deployment_id = deploy_real_model(repo.uri)
    left = kill_deploy(repo, "price", "record", tmp_path)  # price:2: claim, index entries, files
    (top,) = kill_deploy(repo, "price", "index", tmp_path)  # price:3: the highest claim alone
    before = repo.store.walk("")

    fresh = tritonflow("gc", repo.uri)  # the default --min-age (1 h) spares deploys this young
    assert fresh.returncode == 0, fresh.stderr
    assert repo.store.walk("") == before and "removed 0 leftovers" in fresh.stdout
    assert {(action, "younger than --min-age" in why) for action, _, why in lines(fresh)} == {("kept", True)}

    dry = tritonflow("gc", repo.uri, "--dry-run", "--min-age", "0")
    assert dry.returncode == 0, dry.stderr
    assert repo.store.walk("") == before and "nothing was removed (--dry-run)" in dry.stdout
    listed = lines(dry)
    assert covered([key for action, key, _ in listed if action == "would remove"], keys(repo)) == left
    assert [(key, "highest claim of price" in why) for action, key, why in listed if action == "kept"] == [
        (top, True)
    ]

    done = json.loads(tritonflow("gc", repo.uri, "--min-age", "0", "--json").stdout)
    gone = [f["key"] for f in done["findings"] if f["action"] == "removed"]
    assert gone == [key for action, key, _ in listed if action == "would remove"]
    assert (done["removed"], done["kept"], done["dry_run"]) == (len(gone), 1, False)
    assert keys(repo) == {f.key for f in before} - left
    assert "removed 0 leftovers" in tritonflow("gc", repo.uri, "--min-age", "0").stdout

    models = json.loads(tritonflow("models", repo.uri, "--json").stdout)
    assert [(r["version"], r["state"]) for r in models] == [(1, "published")]
    server = serve(repo.uri)
    server.wait_for_state("price", 1, "READY")
    import tritonclient.http as httpclient  # NOTE: see deploy_real_model

    inputs = httpclient.InferInput("input__0", [2, 4], "FP32")
    inputs.set_data_from_numpy(X[:2])
    assert (
        server.client.infer("price", [inputs]).get_response()["parameters"]["deployment_id"] == deployment_id
    )


def test_the_gc_command_fails_clearly(tmp_path):
    missing = tritonflow("gc", tmp_path / "typo")
    assert (
        missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    )
    bad = tritonflow("gc", tmp_path, "--min-age", "-1")
    assert bad.returncode == 2 and "not a number of seconds >= 0" in bad.stderr


def test_a_release_history_that_does_not_read_stops_gc_before_it_removes_anything(local_repo, tmp_path):
    repo = ModelRepository(local_repo)
    publish(repo, "a", "1")
    left = kill_deploy(repo, "a", "record", tmp_path)  # removable once the history reads
    kill_deploy(repo, "a", "index", tmp_path)
    publish(repo, "b", "1")
    gap = ReleaseEvent(2, "promote", 1, None, "ci", utc_now(), "by hand")  # event 1 is missing
    repo.store.write(layout.release_key("b", 2), gap.to_json())
    before = repo.store.walk("")
    result = tritonflow("gc", repo.uri, "--min-age", "0")
    assert (result.returncode, result.stdout, repo.store.walk("")) == (2, "", before)
    assert result.stderr.startswith(
        "tritonflow gc: error: cannot tell which versions of 'b' were released, so gc removes nothing: "
    )
    assert (
        "restore the missing or renamed event files" in result.stderr and len(result.stderr.splitlines()) == 1
    )
    repo.store.delete(layout.releases_prefix("b"))
    assert covered(removed(gc.apply(repo, gc.plan(repo, min_age=0))), {f.key for f in before}) == left


def test_temp_files_of_killed_writes_and_creates_are_removed_once_old_and_nothing_else(
    tmp_path: Path,
) -> None:
    """A killed write or create leaves `.<name>.<8 chars>` beside the file it was to become: config.pbtxt,
    the labels file, an index entry, a claim, a release event. Other names like them are not the store's."""
    repo = ModelRepository(tmp_path)
    publish(repo, "m", "1")
    folder = tmp_path / "m"
    (task,) = (folder / layout.TASKS).iterdir()
    temps = {
        f".{layout.CONFIG}.ab12cd34",
        f".{layout.LABEL_FILE}.x9y8z7w6",
        f"{layout.TASKS}/{task.name}/.2.zz11yy22",
        f"{layout.CLAIMS}/.2.k_3j9x0a",
        f"{layout.RELEASES}/.00000001.json.q1w2e3r4",
    }
    others = {
        ".notes.txt.ab12cd34",
        f"{layout.CLAIMS}/.notes.ab12cd34",
        f"{layout.CLAIMS}/.2.abc",  # not mkstemp's 8 characters
        f"{layout.RELEASES}/.1.json.ab12cd34",  # no event's name: events are <seq:08d>.json
        "1/.checkpoint.tl.ab12cd34",  # inside a published version: never touched
    }
    for name in temps | others:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("half")

    young = gc.plan(repo, min_age=3600)  # NOTE: just written: a write or create may be in progress
    assert {f.key for f in young} == {f"m/{n}" for n in temps} and not removed(young)
    assert all("younger than --min-age" in f.reason for f in young)
    findings = gc.plan(repo, min_age=3600, now=time.time() + 7200)
    assert set(removed(findings)) == {f"m/{n}" for n in temps} == {f.key for f in findings}
    assert {f.reason for f in findings} == {"temp file of a write that was interrupted"}
    gc.apply(repo, findings)
    assert not [n for n in temps if (folder / n).exists()] and all((folder / n).exists() for n in others)
    assert (
        repo.read_record("m", 1).deployment_id.startswith("m:1@") and (folder / layout.CLAIMS / "1").exists()
    )


def test_gc_keeps_every_release_event_and_every_released_version(repo, make_record, tmp_path):
    """The release log and the versions it names are never gc's: not even released versions that lost
    their deployment.json (damage to repair, not killed deploys), which gc would otherwise take for
    unfinished publishes. Killed claims and promotions leave temp files locally (gc removes them), none
    on S3, where a create is one conditional put."""
    from test_releases import MODEL  # NOTE: imported here, see deploy_real_model
    from test_releases import publish as publish_loadable

    from tritonflow.lineage.releases import promote, read_state, set_canary, set_shadow
    from tritonflow.serving.release_policy import champion_config

    publish_loadable(repo, make_record, 5)
    for version in (1, 2):
        promote(repo, MODEL, version, champion_config, reason=f"v{version}")
    set_canary(repo, MODEL, 3, 10, champion_config, reason="try v3")
    set_shadow(repo, MODEL, 4, champion_config, reason="watch v4")
    events = {f.key: repo.store.read(f.key) for f in repo.store.walk(layout.releases_prefix(MODEL))}
    assert len(events) == 4
    assert not [k for k in keys(repo) if any(TEMP.fullmatch(part) for part in k.split("/"))]
    (unfinished,) = kill_deploy(repo, MODEL, "index", tmp_path)  # m:6, a claim alone
    (top,) = kill_deploy(repo, MODEL, "index", tmp_path)  # m:7, the highest claim
    temps = set()
    if not isinstance(repo.store, S3Store):
        temps |= kill_deploy(repo, MODEL, "claim", tmp_path)  # m:8 was being claimed
        temps |= kill_deploy(repo, MODEL, "event", tmp_path)  # event 5 was being written
        assert {k.rpartition("/")[0] for k in temps} == {f"{MODEL}/.versions", f"{MODEL}/.releases"}
        assert all(TEMP.fullmatch(k.rpartition("/")[2]) for k in temps)
    for version in (1, 2, 3, 4):  # damage: each released version loses its record
        repo.store.delete(layout.record_key(MODEL, version))
    before = repo.store.walk("")

    dry = tritonflow("gc", repo.uri, "--dry-run", "--min-age", "0")
    assert dry.returncode == 0, dry.stderr
    assert repo.store.walk("") == before
    listed = lines(dry)
    assert {key for action, key, _ in listed if action == "would remove"} == {unfinished} | temps
    kept = {key: why for action, key, why in listed if action == "kept"}
    for version, role in (
        (1, "in the release history"),
        (2, "the champion"),
        (3, "the canary"),
        (4, "the shadow"),
    ):
        assert kept.pop(layout.version_key(MODEL, version)) == (
            f"{MODEL}:{version} is {role} of {MODEL} but has no deployment.json: restore it "
            "(a released version is never removed)"
        )
        assert kept.pop(layout.claim_key(MODEL, version)).startswith(f"{MODEL}:{version} is {role} ")
    assert "highest claim" in kept.pop(top)
    assert kept and all(why.endswith("(a released version is never removed)") for why in kept.values())

    done = json.loads(tritonflow("gc", repo.uri, "--min-age", "0", "--json").stdout)
    assert {f["key"] for f in done["findings"] if f["action"] == "removed"} == {unfinished} | temps
    assert keys(repo) == {f.key for f in before} - {unfinished} - temps
    assert {f.key: repo.store.read(f.key) for f in repo.store.walk(layout.releases_prefix(MODEL))} == events
    state = read_state(repo, MODEL)
    assert (len(state.events), state.champion, state.canary, state.shadow) == (4, 2, 3, 4)
    assert repo.versions(MODEL) == [5]  # NOTE: the only one with its record; 1-4 await theirs
