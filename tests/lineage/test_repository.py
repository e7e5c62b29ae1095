"""ModelRepository over both stores: version claims, publishing, lookups, and real concurrent deploys."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonflow.lineage import layout
from tritonflow.lineage.errors import NotFound, RepositoryError, TritonflowError
from tritonflow.lineage.ids import InvalidDeploymentId
from tritonflow.lineage.records import sha256_hex
from tritonflow.lineage.repository import ModelRepository, NotARepository

CONFIG = 'name: "m"\nbackend: "fil"\n'


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest) -> ModelRepository:
    return ModelRepository(request.getfixturevalue("s3_bucket" if request.param == "s3" else "local_repo"))


def publish(repo, make_record, model="m", *, run_id="1700000000000001", files=None, task=None):
    files = {"checkpoint.tl": b"model"} if files is None else files
    return repo.publish(
        model,
        CONFIG,
        files,
        lambda v: make_record(model, v, run_id=run_id, files=files, task=task, repository=repo.uri),
        {"run_id": run_id},
    )


def test_claims_are_strictly_increasing(repo):
    assert [repo.claim_version("m", {}) for _ in range(3)] == [1, 2, 3]
    assert repo.claim_version("other", {}) == 1  # per model


def test_claim_refuses_a_bad_model_name(repo):
    with pytest.raises(TritonflowError, match="not a valid Triton model name"):
        repo.claim_version("../m", {})


def test_publish_writes_config_files_and_record(repo, make_record):
    record = publish(repo, make_record, files={"checkpoint.tl": b"trees", "extra/notes.txt": b"n"})
    assert record.deployment_id == "m:1@TrainFlow/1700000000000001"
    assert repo.read_config("m") == CONFIG
    assert repo.store.list("m/1") == ["checkpoint.tl", "deployment.json", "extra"]
    assert repo.store.read("m/1/checkpoint.tl") == b"trees"
    assert repo.read_record("m", 1) == record
    assert repo.models() == ["m"]


def test_publish_shows_the_current_config_first_and_a_refusal_writes_nothing(repo, make_record):
    publish(repo, make_record)
    seen = []

    def refuse(text: str) -> None:
        seen.append(text)
        raise TritonflowError("not this one")

    with pytest.raises(TritonflowError, match="not this one"):
        repo.publish("m", "changed", {"checkpoint.tl": b"x"}, lambda v: make_record("m", v), {}, refuse)
    assert seen == [CONFIG]
    assert repo.read_config("m") == CONFIG
    assert repo.store.list("m/.versions") == ["1"]  # no claim either


def test_publish_leaves_an_unchanged_config_alone(repo, make_record):
    publish(repo, make_record)
    before = repo.store.fingerprint(layout.config_key("m"))
    publish(repo, make_record)
    assert repo.store.fingerprint(layout.config_key("m")) == before


def test_versions_are_never_reused_after_a_version_folder_is_deleted(repo, make_record):
    assert [publish(repo, make_record).version for _ in range(2)] == [1, 2]
    repo.store.delete("m/2")
    assert repo.versions("m") == [1]
    assert publish(repo, make_record).version == 3


def test_unfinished_versions_are_not_published_but_not_reused(repo, make_record):
    publish(repo, make_record)
    repo.store.write("m/5/checkpoint.tl", b"half")  # no record: an unfinished publish
    repo.store.write("m/not-a-version/x", b"x")
    assert repo.versions("m") == [1]
    assert repo.version_numbers("m") == [1, 5]
    assert [(e.version, e.record is not None) for e in repo.entries()] == [(1, True), (5, False)]
    assert publish(repo, make_record).version == 6


def test_models_need_a_config(repo, make_record):
    publish(repo, make_record, "a")
    repo.store.write("b/1/checkpoint.tl", b"x")
    assert repo.models() == ["a"]
    with pytest.raises(NotFound, match="'b' has no config.pbtxt"):
        repo.read_config("b")


def test_resolve_full_and_short_ids(repo, make_record):
    record = publish(repo, make_record)
    assert repo.resolve("m:1") == record
    assert repo.resolve("m:1@TrainFlow/1700000000000001") == record
    assert repo.resolve(record.id) == record


def test_resolve_refuses_an_id_of_another_run(repo, make_record):
    publish(repo, make_record)
    with pytest.raises(NotFound, match="another repository"):
        repo.resolve("m:1@TrainFlow/999")
    with pytest.raises(NotFound, match=r"no deployment m:7 .*known versions of 'm': \[1\]"):
        repo.resolve("m:7")
    with pytest.raises(InvalidDeploymentId):
        repo.resolve("../m:1")


def test_a_malformed_record_is_a_repository_error(repo, make_record):
    publish(repo, make_record)
    repo.store.write("m/1/deployment.json", b"{not json")
    with pytest.raises(RepositoryError, match="m/1/deployment.json is not valid JSON"):
        repo.read_record("m", 1)


def test_find_task_deployment(repo, make_record):
    task = "TrainFlow/1700000000000001/select/7"
    record = publish(repo, make_record, files={"checkpoint.tl": b"trees"}, task=task)
    publish(repo, make_record, files={"checkpoint.tl": b"other"})
    assert repo.find_task_deployment("m", task, {sha256_hex(b"trees")}) == record
    assert repo.find_task_deployment("m", task, {sha256_hex(b"changed")}) is None
    assert repo.find_task_deployment("m", "TrainFlow/1/select/8", {sha256_hex(b"trees")}) is None


def test_find_task_deployment_reads_only_the_tasks_own_versions(repo, make_record):
    task = "TrainFlow/1700000000000001/select/7"
    record = publish(repo, make_record, files={"checkpoint.tl": b"trees"}, task=task)
    for _ in range(3):
        other = publish(repo, make_record, files={"checkpoint.tl": b"other"})
        # unreadable records of other tasks' versions: a lookup that opened them would fail
        repo.store.write(layout.record_key("m", other.version), b"{not json")
    # a later attempt of the same task that died before its record: indexed, skipped
    version = repo.claim_version("m", {})
    repo.store.write(layout.index_key("m", layout.TASKS, task, version), b"")
    assert repo.find_task_deployment("m", task, {sha256_hex(b"trees")}) == record


def test_deployments_of_run(repo, make_record):
    first = publish(repo, make_record, "a", run_id="11")
    other = publish(repo, make_record, "a", run_id="22")
    second = publish(repo, make_record, "b", run_id="11")
    repo.store.write("b/9/checkpoint.tl", b"unfinished")
    # another run's record, unreadable: the lookup reads the run's index, not every record
    repo.store.write(layout.record_key("a", other.version), b"{not json")
    assert repo.deployments_of_run("TrainFlow", "11") == [first, second]
    assert repo.deployments_of_run("OtherFlow", "11") == []


# -- a folder that is not the repository, and typos: what the repository has instead ---------------------
def test_a_model_or_version_folder_given_as_the_repository_names_the_repository(repo, make_record):
    command = "tritonflow lineage m:1 --repository {}"  # NOTE: the last '{}' is the folder
    assert repo.check_layout(command) is False  # a new repository, before its first deploy
    publish(repo, make_record)
    assert repo.check_layout(command) is True
    with pytest.raises(NotARepository) as model:
        ModelRepository(f"{repo.given}/m").check_layout(command)
    assert str(model.value) == (
        f"{repo.given}/m is a model folder (it has config.pbtxt): use its parent, "
        f"`tritonflow lineage m:1 --repository {repo.given}`"
    )
    with pytest.raises(NotARepository) as version:
        ModelRepository(f"{repo.given}/m/1/").check_layout(command)
    assert str(version.value) == (
        f"{repo.given}/m/1/ is a version folder (it has deployment.json): use the repository two levels up, "
        f"`tritonflow lineage m:1 --repository {repo.given}`"
    )


def test_a_folder_above_a_local_repository_names_it(tmp_path, make_record):
    repo = ModelRepository(tmp_path / "my models")
    publish(repo, make_record)
    (tmp_path / "notes.txt").write_text("a file is no repository")
    with pytest.raises(NotARepository) as above:
        ModelRepository(tmp_path).check_layout("tritonflow serve {}")
    assert str(above.value) == (
        f"{tmp_path} has no models, but {tmp_path}/my models below has: "
        f"`tritonflow serve '{tmp_path}/my models'`"
    )


def test_a_mistyped_model_is_answered_with_the_closest_name(repo, make_record):
    publish(repo, make_record, "fraud-classifier")
    publish(repo, make_record, "price")
    with pytest.raises(NotFound) as typo:
        repo.resolve("fraud-clasifier:1@TrainFlow/1700000000000001")
    assert str(typo.value) == (
        f"no deployment fraud-clasifier:1 in {repo.uri}: it has no model 'fraud-clasifier'; "
        "did you mean 'fraud-classifier'? (its models: fraud-classifier, price)"
    )
    with pytest.raises(NotFound) as unlike:
        repo.read_record("zzz", 1)
    assert str(unlike.value).endswith("it has no model 'zzz' (its models: fraud-classifier, price)")


def test_a_mistyped_run_is_answered_with_the_runs_closest_first(repo, make_record):
    runs = ["1795314379884117", "1795314379884999", "1700000000000001", "1600000000000000"]
    for run_id in runs:
        publish(repo, make_record, run_id=run_id)
    repo.store.write(layout.record_key("m", 4), b"{not json")  # NOTE: a damaged record is left out
    with pytest.raises(NotFound) as typo:
        repo.resolve("m:1@TrainFlow/1795314379884118")
    assert str(typo.value) == (
        f"no deployment m:1@TrainFlow/1795314379884118 in {repo.uri}: no version of 'm' there came from "
        "run TrainFlow/1795314379884118 (m:1 is m:1@TrainFlow/1795314379884117); the runs that deployed "
        "it, closest first: TrainFlow/1795314379884117 (m:1), TrainFlow/1795314379884999 (m:2), "
        "TrainFlow/1700000000000001 (m:3). Check the run ID, or the ID comes from another repository"
    )
    with pytest.raises(NotFound) as version:
        repo.resolve("m:1@TrainFlow/1795314379884999")
    assert str(version.value).endswith(
        "run TrainFlow/1795314379884999 made m:2@TrainFlow/1795314379884999 there, "
        "and m:1 is m:1@TrainFlow/1795314379884117: check the version"
    )
    assert repo.closest_runs("TrainFlow/1700000000000002")[0] == "TrainFlow/1700000000000001 (m:3)"


# -- concurrency: separate processes racing for versions of the same model ---------------------------
PUBLISHER = """
import json, sys, time
from pathlib import Path
from tritonflow.lineage.records import DeploymentRecord, sha256_hex
from tritonflow.lineage.repository import ModelRepository

uri, gate, index, template = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
repo = ModelRepository(uri)
repo.versions("m")  # warm up (S3 client, connection) so that the race starts at the gate
payload = f"model of publisher {index}".encode()

def make_record(v):
    files = [{"path": f"{v}/checkpoint.tl", "sha256": sha256_hex(payload), "size": len(payload)}]
    fields = {"version": v, "deployment_id": f"m:{v}@F/{index}", "files": files}
    return DeploymentRecord.from_dict({**template, **fields})

(gate / f"ready-{index}").touch()
while not (gate / "go").exists():
    time.sleep(0.0005)
record = repo.publish("m", "config", {"checkpoint.tl": payload}, make_record, {"publisher": index})
print(record.deployment_id)
"""


def test_concurrent_publishers_get_distinct_complete_versions(repo, make_record, tmp_path):
    n = 4
    gate = tmp_path / "gate"
    gate.mkdir()
    template = json.dumps(make_record("m", 1, flow="F").to_dict())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, repo.uri, str(gate), str(i), template],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    _open_gate(gate, n, procs)
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]

    published = {out.strip() for out, _ in outs}
    assert repo.versions("m") == list(range(1, n + 1))
    for v in repo.versions("m"):
        record = repo.read_record("m", v)
        assert record.version == v and record.deployment_id in published
        payload = repo.store.read(f"m/{v}/checkpoint.tl")
        assert payload == f"model of publisher {record.deployment_id.rsplit('/', 1)[1]}".encode()
        assert record.files[0]["sha256"] == sha256_hex(payload)
    assert repo.read_config("m") == "config"


def _open_gate(gate: Path, n: int, procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every publisher is ready, then let them all go at once."""
    deadline = time.monotonic() + 30
    while len(list(gate.glob("ready-*"))) < n:
        failed = [p for p in procs if p.poll() is not None]
        assert not failed and time.monotonic() < deadline, [p.communicate()[1] for p in failed]
        time.sleep(0.01)
    (gate / "go").touch()
