"""Only the files a record lists, byte for byte, answer under its deployment ID.

Each test serves version 1, then damages version 2 (or the served version) the way disks, copies
and people do: flipped bits, a truncated or out-of-order copy, a checkpoint from another run, a
record copied from another version. The node refuses the damaged version with its reason, keeps
answering from version 1 under version 1's stamp, and serves the version once its files are right.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PROBA_ATOL, Server, Trained, forest, publish, wait_for
from probes import overwrite
from test_reload import X, infer

from tritonflow.lineage.records import DeploymentRecord

MODEL = "fraud-classifier"
RUN_1, RUN_2 = "1000000000000001", "1000000000000002"


def flipped(blob: bytes, seed: int, bits: int = 1) -> bytes:
    data = bytearray(blob)
    rng = random.Random(seed)
    for position in rng.sample(range(len(data) * 8), bits):
        data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


def checkpoint(root: Path, version: int) -> Path:
    return root / MODEL / str(version) / "checkpoint.tl"


def assert_v1_answers(server: Server, v1: DeploymentRecord, times: int = 5) -> None:
    """Version 1's stamp on every answer, and version 1's model behind it."""
    for _ in range(times):
        answer = infer(server)
        assert (answer.status, answer.deployment) == (200, v1.deployment_id), answer.error
        np.testing.assert_allclose(answer.outputs, forest(0).proba(X), atol=PROBA_ATOL)


@pytest.fixture
def v1(local_repo: Path) -> DeploymentRecord:
    return publish(local_repo, MODEL, forest(0), run_id=RUN_1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_flipped_bit_refuses_the_version_and_the_previous_one_keeps_serving(serve, local_repo, v1, seed):
    server = serve(local_repo)
    good = forest(2).files["checkpoint.tl"]
    publish(local_repo, MODEL, forest(2), run_id=RUN_2, files={"checkpoint.tl": flipped(good, seed)})
    reason = server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    assert f"checkpoint.tl of {MODEL}:2@TestFlow/{RUN_2} has another sha256 than its record lists" in reason
    assert "is not the file that deployment published" in reason
    assert_v1_answers(server, v1)
    assert server.sample("tritonflow_version_refusals_total", model=MODEL, reason="integrity") >= 1
    assert f"refused {MODEL}:2: checkpoint.tl of {MODEL}:2@TestFlow/{RUN_2}" in server.log_text()


def test_a_checkpoint_from_another_run_is_never_served_under_this_runs_stamp(serve, local_repo, v1):
    server = serve(local_repo)
    publish(
        local_repo, MODEL, forest(2), run_id=RUN_2, files={"checkpoint.tl": forest(0).files["checkpoint.tl"]}
    )
    assert (
        "is not the file that deployment published"
        in server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    )
    assert_v1_answers(server, v1)


def test_a_served_checkpoint_overwritten_in_place_is_refused_after_a_restart(serve, local_repo, v1):
    v2 = publish(local_repo, MODEL, forest(2), run_id=RUN_2)
    server = serve(local_repo)
    assert infer(server).deployment == v2.deployment_id
    checkpoint(local_repo, 2).write_bytes(forest(0).files["checkpoint.tl"])  # another run's model
    server.stop()
    restarted = serve(local_repo)
    assert "is not the file that deployment published" in restarted.index_row(MODEL, 2)["reason"]
    assert_v1_answers(restarted, v1)


def test_a_record_copied_from_another_version_is_refused(serve, local_repo, v1):
    server = serve(local_repo)
    copy = local_repo / MODEL / ".copy"
    shutil.copytree(local_repo / MODEL / "1", copy)
    copy.rename(local_repo / MODEL / "2")  # version 1's files and record, in folder 2
    reason = server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    assert (
        "is not the record of fraud-classifier:2" in reason
        and "deployment_id is 'fraud-classifier:1'" in reason
    )
    assert_v1_answers(server, v1)


def test_a_version_copied_record_first_is_served_once_its_checkpoint_arrives(serve, local_repo, tmp_path, v1):
    """`cp -r` and `aws s3 cp` copy in any order: a record before its checkpoint waits, then serves."""
    staged = tmp_path / "staged"
    staged.mkdir()
    publish(staged, MODEL, forest(0), run_id=RUN_1)
    v2 = publish(staged, MODEL, forest(2), run_id=RUN_2)
    server = serve(local_repo)
    folder = local_repo / MODEL / "2"
    folder.mkdir()
    shutil.copy(staged / MODEL / "2" / "deployment.json", folder)  # the record first...
    reason = server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    assert f"checkpoint.tl of {v2.deployment_id}, listed in its record, is missing" in reason
    assert_v1_answers(server, v1)
    good = (staged / MODEL / "2" / "checkpoint.tl").read_bytes()
    (folder / "checkpoint.tl").write_bytes(good[: len(good) // 2])  # ...then half the checkpoint...
    wait_for(lambda: "bytes, the record" in server.index_row(MODEL, 2)["reason"], what="a half copy")
    assert_v1_answers(server, v1)
    (folder / "checkpoint.tl").write_bytes(good)  # ...then all of it
    wait_for(lambda: infer(server).deployment == v2.deployment_id, what="v2 to serve")
    np.testing.assert_allclose(infer(server).outputs, forest(2).proba(X), atol=PROBA_ATOL)
    assert f"waiting for {MODEL}:2" in server.log_text()


# -- files that match their record yet are broken: the probe child takes the blow ---------------------
def node_rss(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda: overwrite("cleft", 1 << 30), "the engine crashed (SIGSEGV)"),
        (lambda: overwrite("cleft", 1 << 31, count=True), "memory"),
    ],
    ids=["segfault", "memory-flood"],
)
def test_a_recorded_yet_broken_checkpoint_costs_a_child_not_the_node(serve, local_repo, v1, corrupt, words):
    """As published: the record lists the broken file's own sha256, so only the probe can stop it."""
    server = serve(local_repo, "--probe-memory", "512")
    before = node_rss(server)
    broken = Trained(forest(0).estimator, {"checkpoint.tl": corrupt()}, "fil")
    publish(local_repo, MODEL, broken, run_id=RUN_2)
    reason = server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    assert words in reason, reason
    assert_v1_answers(server, v1)
    assert server.process.poll() is None
    assert node_rss(server) < before + 100 * 2**20  # the flood stayed in the child
    assert server.sample("tritonflow_version_refusals_total", model=MODEL, reason="probe") >= 1
