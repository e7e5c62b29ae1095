"""The Python API as a notebook calls it: real repositories (local and moto S3), real deploys, a real
node answering through tritonclient over HTTP and gRPC, and the commands' JSON to compare with."""

from __future__ import annotations

import http.client
import itertools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.ensemble import RandomForestClassifier

import tritonflow
from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.repository import ModelRepository, NotARepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MODEL = "fraud"
RUN_IDS = ("1795314379884117", "1795314379884999")
TASK_IDS = itertools.count(2)  # NOTE: a task that publishes the same files again gets its version back
ROWS = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")


def publish(repository: str | Path, run_id: str = RUN_IDS[0], n: int = 1) -> None:
    """`n` versions deployed the way @deploy does (promote='never': the version policy decides), with
    the run's parameters, data, metrics and candidates in each record."""
    forest = RandomForestClassifier(5, max_depth=3, random_state=0).fit(ROWS, ROWS[:, 0] > 0)
    opts = parse_options(
        {"name": MODEL, "repository": str(repository), "promote": "never"}, "TrainFlow", is_join=False
    )
    for _ in range(n):
        task = f"TrainFlow/{run_id}/train/{next(TASK_IDS)}"
        candidates = [
            {"label": "rf", "score": 0.93, "task": task, "index": 0},
            {"label": "gb", "score": 0.91, "task": f"TrainFlow/{run_id}/train/1", "index": 1},
        ]
        provenance = Provenance(
            metaflow={
                "flow": "TrainFlow",
                "run_id": run_id,
                "step": "train",
                "task": task,
                "user": "tester",
                "parameters": {"rows": "4000", "note": "<b>bold</b>"},
            },
            data=[{"name": "X_train", "sha": "5e1f00d", "size": 128, "task": f"TrainFlow/{run_id}/start/1"}],
            metrics={"val_auc": 0.93},
            selection={"rule": "max:val_auc", "winner": candidates[0], "candidates": candidates},
        )
        deploy(forest, opts, sample=ROWS, provenance=provenance)


def command(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tritonflow", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def repo(request: pytest.FixtureRequest, local_repo: Path) -> str:
    """A repository with fraud:1 from the first run, as a local path, or as s3:// when parametrized so."""
    uri = (
        request.getfixturevalue("s3_bucket")
        if getattr(request, "param", "local") == "s3"
        else str(local_repo)
    )
    publish(uri)
    return uri


def test_lineage_of_reads_every_form_of_a_served_response(repo, serve, tmp_path):
    server = serve(repo)
    stamp = f"{MODEL}:1@TrainFlow/{RUN_IDS[0]}"
    x = httpclient.InferInput("input__0", [2, 4], "FP32")
    x.set_data_from_numpy(ROWS[:2])
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        g = grpcclient.InferInput("input__0", [2, 4], "FP32")
        g.set_data_from_numpy(ROWS[:2])
        over_grpc = grpc.infer(MODEL, [g])
    body = {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0].tolist()}]}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", f"/v2/models/{MODEL}/infer", json.dumps(body))
    answer = connection.getresponse()
    raw = answer.read()
    connection.close()
    (tmp_path / "saved.json").write_bytes(raw)
    binary = server.client.infer(
        MODEL, [x], outputs=[httpclient.InferRequestedOutput("output__0", binary_data=True)]
    )
    forms = {
        "full ID": stamp,
        "short ID (stock Triton)": f"{MODEL}:1",
        "HTTP InferResult": server.client.infer(MODEL, [x]),
        "HTTP InferResult, binary output": binary,
        "gRPC InferResult": over_grpc,
        "gRPC response as JSON": over_grpc.get_response(as_json=True),
        "JSON body": json.loads(raw),
        "body bytes": raw,
        "saved file": tmp_path / "saved.json",
        "http.client headers": answer.headers,
        "headers as a dict": {"X-Deployment-Id": answer.headers["x-deployment-id"]},
        "stock Triton body": {"model_name": MODEL, "model_version": "1", "outputs": []},
    }
    docs = {name: tritonflow.lineage_of(form, repo, live=False) for name, form in forms.items()}
    for name, doc in docs.items():
        assert doc.deployment.deployment_id == stamp, name
    # the same document as the command's --json
    printed = json.loads(command("lineage", stamp, "--repository", repo, "--json", "--no-metaflow"))
    assert json.loads(json.dumps(docs["full ID"].to_dict(), default=str)) == printed
    assert all(doc == docs["full ID"] for doc in docs.values())


def test_the_document_reads_as_attributes_and_cannot_be_changed(repo):
    doc = tritonflow.lineage_of(f"{MODEL}:1", repo, live=False)
    assert isinstance(doc, tritonflow.Lineage)
    assert doc.run.pathspec == doc["run"]["pathspec"] == f"TrainFlow/{RUN_IDS[0]}"
    assert doc.deployment.currently_served is True and doc.model.metrics.val_auc == 0.93
    assert doc.data.artifacts[0].name == "X_train" and doc.metaflow.available is False
    assert repr(doc) == f"Lineage('{MODEL}:1@TrainFlow/{RUN_IDS[0]}', run status 'unknown')"
    with pytest.raises(TypeError):
        doc["run"] = {}  # type: ignore[index]
    with pytest.raises(AttributeError, match="read-only"):
        doc.run = {}
    with pytest.raises(AttributeError, match="has no 'rnu'; its keys: schema, deployment, run"):
        doc.rnu  # noqa: B018
    doc.data.artifacts.append("changed")
    copied = doc.to_dict()
    copied["run"]["pathspec"] = "changed"
    assert len(doc.data.artifacts) == 1 and doc.run.pathspec == f"TrainFlow/{RUN_IDS[0]}"
    assert pickle.loads(pickle.dumps(doc)) == doc and "run" in dir(doc)


def test_the_notebook_view_is_a_table_of_run_data_code_parameters_metrics_candidates_release(repo):
    tritonflow.promote(f"{MODEL}:1", repo, reason="the first")
    page = tritonflow.lineage_of(f"{MODEL}:1", repo, live=False)._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    for section in ("Deployment", "Run", "Code", "Data", "Parameters", "Metrics", "Candidates", "Release"):
        assert f">{section}" in page, section
    for shown in (
        f"TrainFlow/{RUN_IDS[0]}",
        "X_train",
        "5e1f00d",
        "val_auc",
        "* rf",
        "gb",
        "champion",
        "rows",
    ):
        assert shown in page, shown
    assert "v1 was promoted by" in page and "<td>served now</td><td><code>yes</code>" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>" not in page  # a run's values are escaped


def test_deployments_of_run(repo):
    publish(repo, RUN_IDS[1], n=2)
    docs = tritonflow.deployments_of_run(f"TrainFlow/{RUN_IDS[1]}", repo, live=False)
    assert [d.deployment.deployment_id for d in docs] == [
        f"{MODEL}:{v}@TrainFlow/{RUN_IDS[1]}" for v in (2, 3)
    ]
    printed = json.loads(
        command(
            "lineage", "--run", f"TrainFlow/{RUN_IDS[1]}", "--repository", repo, "--json", "--no-metaflow"
        )
    )
    assert json.loads(json.dumps([d.to_dict() for d in docs], default=str)) == printed
    with pytest.raises(NotFound, match=r"came from run TrainFlow/1; its runs, closest first: TrainFlow/"):
        tritonflow.deployments_of_run("TrainFlow/1", repo)
    with pytest.raises(TritonflowError, match="is not a run pathspec: use FLOW/RUN_ID"):
        tritonflow.deployments_of_run("TrainFlow", repo)


def test_models_lists_what_the_command_lists(repo):
    ModelRepository(repo).store.write(f"{MODEL}/2/checkpoint.tl", b"half")  # a publish killed midway
    rows = tritonflow.models(repo)
    assert [(r["version"], r["state"]) for r in rows] == [
        (1, "published"),
        (2, "unfinished (no deployment.json)"),
    ]
    assert rows[0]["deployment_id"] == f"{MODEL}:1@TrainFlow/{RUN_IDS[0]}"
    assert rows == json.loads(command("models", repo, "--json"))


@pytest.mark.parametrize("repo", ["local", "s3"], indirect=True)
def test_promote_canary_shadow_rollback_and_releases(repo, monkeypatch):
    monkeypatch.setenv("METAFLOW_USER", "dana")
    publish(repo, n=2)
    listed = tritonflow.releases(MODEL, repo, live=False)  # the first deploy of a model is its champion
    assert listed.champion == 1 and [v.role for v in listed.versions] == [
        "champion",
        "challenger",
        "challenger",
    ]

    assert tritonflow.promote(f"{MODEL}:1", repo, reason="again") is None  # already the champion
    canary = tritonflow.canary(f"{MODEL}:2", repo, percent=10, reason="try")
    assert (canary.canary, canary.percent, canary.version) == (2, 10.0, 1)
    assert tritonflow.shadow(f"{MODEL}:3", repo).shadow == 3

    listed = tritonflow.releases(MODEL, repo, live=False)
    assert isinstance(listed, tritonflow.Releases)
    assert (listed.champion, listed.canary.percent, listed.shadow) == (1, 10.0, 3)
    assert [v.role for v in listed.versions] == ["champion", "canary", "shadow"]
    assert repr(listed) == f"Releases('{MODEL}', champion 1, versions [1, 2, 3])"
    assert "v2 became canary for 10% of unversioned requests by dana" in listed._repr_html_()
    assert listed.to_dict() == json.loads(command("releases", repo, MODEL, "--json", "--no-metaflow"))
    assert tritonflow.lineage_of(f"{MODEL}:2", repo, live=False).release.role == "canary"

    promoted = tritonflow.promote(f"{MODEL}:2", repo, reason="better")
    assert promoted is not None and (promoted.previous, promoted.canary) == (1, None)  # the canary took over
    back = tritonflow.rollback(MODEL, repo, reason="alerts")
    assert (back.version, back.previous, back.reason) == (1, 2, "alerts")
    assert tritonflow.shadow(MODEL, repo, stop=True).shadow is None
    assert tritonflow.lineage_of(f"{MODEL}:1", repo, live=False).deployment.served_versions == [1]
    assert [e.kind for e in tritonflow.releases(MODEL, repo, live=False).history] == [
        "promote",  # @deploy's
        "canary",
        "shadow",
        "promote",
        "rollback",
        "shadow",
    ]


def test_bad_release_input_is_the_commands_message_and_writes_nothing(repo):
    publish(repo, n=2)
    ModelRepository(repo).store.write(
        f"{MODEL}/2/checkpoint.tl", b"overwritten"
    )  # its sha256 no longer matches
    cases = [
        (
            lambda: tritonflow.promote(f"{MODEL}:1@F/1", repo, reason="x"),
            "give MODEL:VERSION, not a full deployment ID",
        ),
        (
            lambda: tritonflow.promote(f"{MODEL}:9", repo, reason="x"),
            "cannot make fraud:9 champion: no deployment",
        ),
        (
            lambda: tritonflow.promote(f"{MODEL}:2", repo, reason="x"),
            "it does not load as `tritonflow serve` loads it",
        ),
        (lambda: tritonflow.rollback(MODEL, repo), "'fraud' has no previous champion to roll back to"),
        (
            lambda: tritonflow.canary(f"{MODEL}:1", repo, percent=5),
            "fraud:1 is the champion: a canary is another",
        ),
        (
            lambda: tritonflow.canary(f"{MODEL}:1", repo, stop=True),
            "--stop takes the model's name, not fraud:1",
        ),
        (lambda: tritonflow.releases("nope", repo), "model 'nope' has no config.pbtxt"),
        (lambda: tritonflow.releases(MODEL, f"{repo}/{MODEL}"), "is a model folder (it has config.pbtxt)"),
    ]
    for call, message in cases:
        with pytest.raises(TritonflowError) as caught:
            call()
        assert message in str(caught.value), (message, caught.value)
    with pytest.raises(TritonflowError, match=r"give the canary's share: --percent P \(0-100\)"):
        tritonflow.canary(f"{MODEL}:3", repo)
    assert len(tritonflow.releases(MODEL, repo, live=False).history) == 1


def test_what_lineage_of_cannot_read_is_a_clear_error(repo, tmp_path):
    cases = [
        (42, "cannot read a deployment ID from a int: give the ID, a saved response file"),
        ({"outputs": []}, "the response has neither parameters.deployment_id, model_name and model_version"),
        (b"\x00garbage", "the response bytes is not an inference response: it does not start with JSON"),
        (tmp_path / "missing.json", "cannot read --response"),
        ("fraud", "'fraud' is not a deployment ID"),
        (f"{MODEL}:7", "no deployment fraud:7"),
        (http.client.HTTPMessage(), "the headers have no x-deployment-id"),
    ]
    for given, message in cases:
        with pytest.raises(tritonflow.TritonflowError) as caught:
            tritonflow.lineage_of(given, repo, live=False)
        assert message in str(caught.value), (given, caught.value)
    with pytest.raises(NotARepository, match=rf"use its parent, `tritonflow lineage {MODEL}:1 --repository "):
        tritonflow.lineage_of(f"{MODEL}:1", f"{repo}/{MODEL}")


def test_importing_tritonflow_loads_neither_serving_nor_metaflow(repo):
    code = f"""
import json, sys
import tritonflow
loaded = lambda: sorted({{m.split(".")[1] if m.startswith("tritonflow.") else m.split(".")[0]
                         for m in sys.modules if m.startswith(("tritonflow.", "metaflow"))}})
seen = {{"import": loaded()}}
tritonflow.models({str(repo)!r})
seen["models"] = loaded()
tritonflow.lineage_of("{MODEL}:1", {str(repo)!r}, live=False)
seen["lineage_of"] = loaded()
try:
    tritonflow.nope
except AttributeError as exc:
    seen["nope"] = str(exc)
print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["import"] == []
    assert "serving" not in seen["models"] and "metaflow" not in seen["models"], seen
    assert "serving" in seen["lineage_of"] and "metaflow" not in seen["lineage_of"], seen
    assert seen["nope"] == "module 'tritonflow' has no attribute 'nope'"
