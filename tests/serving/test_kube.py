"""`tritonflow kube`: manifests for a repository on S3 (moto), checked against Kubernetes 1.30's own
schemas (kubernetes-validate, strict: unknown fields are errors, as `kubectl apply` makes them) and
the KServe and Prometheus Operator CRDs' schemas (tests/serving/kube_schemas); the release state
(champion, canary and its share) read from the repository; the refusals."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import treelite
import yaml
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.cli import build_parser, main
from tritonflow.lineage.releases import promote, set_canary
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.kubernetes import plain
from tritonflow.serving.kubernetes.yaml_text import dump
from tritonflow.serving.metrics import TRITON
from tritonflow.serving.model_config import (
    ConfigSpec,
    TensorSpec,
    build_config,
    check_config,
    render,
    served_versions,
)
from tritonflow.serving.release_policy import champion_config

KUBERNETES = "1.30"
SCHEMAS = Path(__file__).parent / "kube_schemas"
CRDS = {
    "InferenceService": "inferenceservice.serving.kserve.io.v1beta1.json",
    "ServiceMonitor": "servicemonitor.monitoring.coreos.com.v1.json",
}
# kserve/kserve v0.20.0 config/runtimes/kserve-tritonserver.yaml: KServe appends the model's args to these
KSERVE_TRITON_ARGS = [
    "tritonserver",
    "--model-store=/mnt/models",
    "--grpc-port=9000",
    "--http-port=8080",
    "--allow-grpc=true",
    "--allow-http=true",
]
MODEL = "Fraud_clf.v2"  # not a Kubernetes name as it is: the objects are named fraud-clf-v2
NAME = "fraud-clf-v2"


def config(kind: str = "cpu") -> str:
    spec = ConfigSpec(
        name=MODEL,
        backend="fil",
        inputs=(TensorSpec("input__0", "FP32", (4,)),),
        outputs=(TensorSpec("output__0", "FP32", (2,)),),
        max_batch_size=64,
        max_queue_delay_us=100,
        instance_kind=kind,
        parameters={
            "model_type": "treelite_checkpoint",
            "is_classifier": "true",
            "predict_proba": "true",
            "threshold": "0.5",
        },
    )
    return render(build_config(spec))


@cache
def checkpoint() -> bytes:
    """A real forest on the config's signature: releases load a version before they decide."""
    X, y = make_classification(64, 4, random_state=0)
    forest = RandomForestClassifier(3, max_depth=3, random_state=0).fit(X.astype(np.float32), y)
    return treelite.sklearn.import_model(forest).serialize_bytes()


def publish(repo: ModelRepository, make_record: Callable[..., Any], n: int, kind: str = "cpu") -> None:
    files = {"checkpoint.tl": checkpoint()}
    for _ in range(n):
        repo.publish(MODEL, config(kind), files, lambda v: make_record(MODEL, v, files=files), {"run": "r"})


@pytest.fixture
def repo(s3_bucket: str, make_record: Callable[..., Any]) -> ModelRepository:
    """Two published versions (records written for Triton 26.06), v1 champion, v2 canary for 12.5%."""
    repository = ModelRepository(s3_bucket)
    publish(repository, make_record, 2)
    promote(repository, MODEL, 1, champion_config, reason="baseline")
    set_canary(repository, MODEL, 2, 12.5, champion_config, reason="try v2")
    return repository


def kube(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["kube", *args])
    out, err = capsys.readouterr()
    return status, out, err


def written(folder: Path) -> dict[str, dict[str, Any]]:
    """file name -> its one document, for every YAML file but the kustomization."""
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(folder.glob("*.yaml"))}
    assert all(len(d) == 1 for d in docs.values())
    kustomization = docs.pop("kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization" and sorted(kustomization["resources"]) == sorted(docs)
    return {name: d[0] for name, d in docs.items()}


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as `kubectl apply` (strict field validation) does:
    objects that list their properties get additionalProperties false, unless they keep unknown ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    keeps_unknown = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    return strict(json.loads((SCHEMAS / CRDS[kind]).read_text()))


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRDS:
        jsonschema.validate(doc, crd_schema(doc["kind"]))
        # NOTE: a CRD's schema leaves metadata open: check it as Kubernetes' ObjectMeta
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"][0]
    predictor = doc["spec"]["predictor"]
    return predictor["model"] if "model" in predictor else predictor["containers"][0]


@pytest.mark.parametrize("target", ["kubernetes", "kserve"])
@pytest.mark.parametrize("runtime", ["triton", "tritonflow"])
def test_every_manifest_passes_its_schema(repo, target, runtime, tmp_path, capsys):
    out = tmp_path / "k8s"
    args = [MODEL, "--repository", repo.uri, "--runtime", runtime, "--target", target, "--namespace", "ml"]
    args += ["--replicas", "2:6", *(["--scale-on-queue-us", "500"] if target == "kubernetes" else [])]
    status, stdout, _ = kube(*args, "--out", str(out), capsys=capsys)
    assert status == 0, stdout
    docs = written(out)
    expected = {
        "kubernetes": {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"},
        "kserve": {"InferenceService"} | ({"ServiceAccount"} if runtime == "triton" else set()),
    }[target]
    assert {d["kind"] for d in docs.values()} == expected
    for doc in docs.values():
        validate(doc)
        assert doc["metadata"]["name"].startswith(NAME) and doc["metadata"]["namespace"] == "ml"
    assert (out / "Dockerfile").exists() == (runtime == "tritonflow")
    if target == "kubernetes":
        hpa = docs["hpa.yaml"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
        assert [m["type"] for m in hpa["metrics"]] == ["Resource", "Pods"]
    # the same documents on stdout, for `| kubectl apply -f -`
    status, stdout, _ = kube(*args, capsys=capsys)
    assert status == 0 and sorted(map(json.dumps, yaml.safe_load_all(stdout))) == sorted(
        map(json.dumps, docs.values())
    )


def test_a_schema_check_can_fail():
    """The checks above would see a misspelled field or a wrong type."""
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"}}
    with pytest.raises(jsonschema.ValidationError):
        validate({**isvc, "spec": {"predictor": {"minReplica": 1}}})
    with pytest.raises(jsonschema.ValidationError):
        validate({**isvc, "spec": {"predictor": {"canaryTrafficPercent": "10"}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"port": [1]}})


def test_kserve_follows_the_release_state(repo, tmp_path, capsys):
    def isvc(runtime: str = "triton") -> dict[str, Any]:
        status, out, err = kube(
            MODEL, "--repository", repo.uri, "--target", "kserve", "--runtime", runtime, capsys=capsys
        )
        assert status == 0, err
        return next(d for d in yaml.safe_load_all(out) if d["kind"] == "InferenceService")

    canary = isvc()
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 13  # 12.5% rounded: KServe takes whole percents
    assert predictor["model"]["storageUri"] == repo.uri
    assert predictor["model"]["runtimeVersion"] == "26.06-py3"  # the records' triton_version
    # the canary revision serves exactly v2 under the model's name, as Triton reads the config
    env = {e["name"]: e.get("value") for e in predictor["model"]["env"]}
    served = check_config(env["TRITONFLOW_CANARY_CONFIG"], model_name=MODEL)
    assert served_versions(served, repo.versions(MODEL)) == [2]
    started = run_canary_command(predictor["model"], env["TRITONFLOW_CANARY_CONFIG"], tmp_path)
    # tritonserver ran, its model store moved to the copy, every other argument as KServe gave it
    assert started == [
        f"--model-store={tmp_path / 'copy'}",
        *KSERVE_TRITON_ARGS[2:],
        *predictor["model"]["args"],
    ]
    assert (tmp_path / "copy" / MODEL / "config.pbtxt").read_text() == env["TRITONFLOW_CANARY_CONFIG"]
    # the node splits by itself: KServe must not split again
    assert "canaryTrafficPercent" not in isvc("tritonflow")["spec"]["predictor"]

    promote(repo, MODEL, 2, champion_config, reason="v2 is better")
    promoted = isvc()["spec"]["predictor"]
    assert "canaryTrafficPercent" not in promoted and "command" not in promoted["model"]
    release = {e["name"]: e["value"] for e in promoted["model"]["env"]}["TRITONFLOW_RELEASE"]
    assert release == "champion v2" != env["TRITONFLOW_RELEASE"]  # a new revision once applied


def run_canary_command(model: dict[str, Any], canary_config: str, tmp_path: Path) -> list[str]:
    """Run the canary revision's command as KServe runs it (the runtime's args, then ours) with /bin/sh,
    /mnt/models and /tmp/models moved under tmp_path and a stand-in tritonserver that records its
    arguments (after its name): what the real one would be started with."""
    mnt, bin_dir, started = tmp_path / "mnt", tmp_path / "bin", tmp_path / "started"
    (mnt / MODEL / "1").mkdir(parents=True)
    (mnt / MODEL / "config.pbtxt").write_text(config())
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {started}\n")
    fake.chmod(0o755)
    shell, flag, script, name = model["command"]
    script = script.replace("/mnt/models", str(mnt)).replace("/tmp/models", str(tmp_path / "copy"))
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TRITONFLOW_CANARY_CONFIG": canary_config}
    argv = [shell, flag, script, name, *KSERVE_TRITON_ARGS, *model["args"]]
    subprocess.run(argv, env=environment, check=True, timeout=30)
    return started.read_text().splitlines()


def test_plain_triton_says_it_serves_only_the_champion(repo, capsys):
    status, out, err = kube(MODEL, "--repository", repo.uri, capsys=capsys)
    assert status == 0
    assert "canary v2 (12.5%) needs --target kserve or --runtime tritonflow" in err
    deployment = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment")
    args = container_of(deployment)["args"]
    assert f"--model-repository={repo.uri}" in args and "--model-control-mode=poll" in args


def test_the_node_container_runs_the_real_serve_command(repo, capsys):
    """The arguments the pods pass after the image's entrypoint are what `tritonflow serve` accepts."""
    for target in ("kubernetes", "kserve"):
        status, out, _ = kube(
            MODEL, "--repository", repo.uri, "--runtime", "tritonflow", "--target", target, capsys=capsys
        )
        assert status == 0
        doc = next(d for d in yaml.safe_load_all(out) if d["kind"] in ("Deployment", "InferenceService"))
        container = container_of(doc)
        args = build_parser("serve").parse_args(container["args"])
        assert args.repository == repo.uri and args.host == "0.0.0.0"
        ports = {p["containerPort"] for p in container["ports"]}
        assert args.http_port in ports
        assert {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} == {
            "/v2/health/ready",
            "/v2/health/live",
        }


def test_graceful_termination_outlasts_the_drain(repo, capsys):
    for runtime in ("triton", "tritonflow"):
        status, out, _ = kube(MODEL, "--repository", repo.uri, "--runtime", runtime, capsys=capsys)
        deployment = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        drain = next(
            int(a.split("=")[1])
            for a in container["args"]
            if a.startswith(("--exit-timeout-secs", "--shutdown-timeout"))
        )
        assert pod["terminationGracePeriodSeconds"] > sleep + drain
        secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets


def test_the_adapter_rule_reads_metrics_the_node_exports():
    counters = {name for name, kind, _, _ in TRITON if kind == "counter"}
    rule = plain.adapter_rule()
    assert {plain.QUEUE_US, plain.SUCCESS} <= counters
    assert plain.QUEUE_US in rule["seriesQuery"] and plain.SUCCESS in rule["metricsQuery"]
    assert rule["name"]["as"] == plain.QUEUE_METRIC


def test_gpu(repo, s3_bucket, make_record, tmp_path, capsys):
    gpu_repo = ModelRepository(s3_bucket.replace("/models", "/gpu"))
    publish(gpu_repo, make_record, 1, kind="gpu")
    status, _, err = kube(MODEL, "--repository", gpu_repo.uri, capsys=capsys)
    assert status == 2 and "KIND_GPU" in err and "--gpu" in err
    out = tmp_path / "gpu"
    status, _, _ = kube(
        MODEL,
        "--repository",
        gpu_repo.uri,
        "--runtime",
        "tritonflow",
        "--gpu",
        "--out",
        str(out),
        capsys=capsys,
    )
    assert status == 0
    docs = written(out)
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in dockerfile and '"tritonflow[gpu]==' in dockerfile
    assert f"docker build -t {pod['containers'][0]['image']} ." in dockerfile


def test_refusals(repo, local_repo, capsys):
    cases = [
        ([MODEL, "--repository", str(local_repo)], "is a local folder: pods in a cluster cannot read"),
        (["nope", "--repository", repo.uri], "model 'nope' has no config.pbtxt in s3://"),
        (
            [MODEL, "--repository", repo.uri, "--triton-version", "25.08"],
            "'is_classifier', which the FIL backend",
        ),
        ([MODEL, "--repository", repo.uri, "--name", "Bad_Name"], "is not a Kubernetes name"),
        (
            [MODEL, "--repository", repo.uri, "--target", "kserve", "--scale-on-queue-us", "9"],
            "KServe scales",
        ),
        ([MODEL, "--repository", repo.uri, "--image", "x:1"], "add --runtime tritonflow"),
    ]
    for args, message in cases:
        status, out, err = kube(*args, capsys=capsys)
        assert (status, out) == (2, "") and message in err and err.count("\n") == 1, err
        assert err.startswith("tritonflow kube: error: ")


def test_yaml_writer_round_trips():
    tricky = {
        "plain": "abc",
        "yes": "yes",
        "number-like": "1",
        "empty": "",
        "colon": "a: b",
        "lines": 'name: "m"\n  indented\n\nlast\n',
        "no-newline": "a\nb",
        "kept": "a\n\n",
        "leading": "  a\nb",
        "tab": "a\tb\nc",
        "unicode": "µs\n€",
        "list": [{"a": 1, "b": [1, "x"]}, [], {}, None, True, 1.5],
        "nested": {"k": {"j": ["-x", "--y=1"]}},
    }
    assert list(yaml.safe_load_all(dump([tricky, {"second": 2}]))) == [tricky, {"second": 2}]


def test_without_release_decisions(s3_bucket, make_record, tmp_path, capsys):
    """A model that was only published: config.pbtxt's policy serves it; no canary anywhere."""
    fresh = ModelRepository(s3_bucket)
    publish(fresh, make_record, 1)
    for target in ("kubernetes", "kserve"):
        out = tmp_path / target
        status, _, err = kube(
            MODEL, "--repository", fresh.uri, "--target", target, "--out", str(out), capsys=capsys
        )
        assert status == 0 and "note:" not in err
        for doc in written(out).values():
            validate(doc)
            assert doc["metadata"]["annotations"]["tritonflow.io/release"] == "no decision (config policy)"
            assert "canaryTrafficPercent" not in doc.get("spec", {}).get("predictor", {})


def test_an_s3_compatible_endpoint(repo, capsys):
    endpoint = "http://minio.storage:9000"
    for runtime in ("triton", "tritonflow"):
        status, out, _ = kube(
            MODEL, "--repository", repo.uri, "--runtime", runtime, "--s3-endpoint", endpoint, capsys=capsys
        )
        assert status == 0
        container = container_of(next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment"))
        if runtime == "triton":  # Triton takes the endpoint in the path
            assert f"--model-repository=s3://{endpoint}/{repo.uri[5:]}" in container["args"]
        else:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["TRITONFLOW_S3_ENDPOINT_URL"] == endpoint
