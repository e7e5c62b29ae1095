"""The one serving container per runtime, as KServe's predictor and the plain Deployment both run it.

Plain Kubernetes: the server reads S3 itself in poll mode, so a promote reaches running pods within
POLL_SECONDS, without a rollout. KServe (Triton): the storage initializer copies the repository into
/mnt/models when a pod starts, so each release decision is a new revision (`tritonflow kube` again,
then `kubectl apply`); TRITONFLOW_RELEASE names the decision, so the spec changes with it. The
other runtimes follow the repository live and carry the release only as an annotation.
"""

from __future__ import annotations

import shlex
from typing import Any

from tritonflow import __version__
from tritonflow.serving.kubernetes.plan import Plan

Manifest = dict[str, Any]
HTTP, GRPC, METRICS = 8000, 8001, 8002
KSERVE_HTTP, KSERVE_GRPC = 8080, 9000  # the ports KServe's Triton runtime serves on and routes to
POLL_SECONDS = 30  # every poll lists the model's prefix in S3: seconds, not milliseconds, apart
DRAIN_SECONDS = 20  # in-flight requests get this long after SIGTERM (both servers' own setting)
ENDPOINTS_SECONDS = 5  # preStop: time for the Service to stop sending new requests before SIGTERM
GRACE_SECONDS = ENDPOINTS_SECONDS + DRAIN_SECONDS + 5
CACHE_DIR = "/var/cache/tritonflow"  # the node's checked copies of versions (an emptyDir)
KSERVE_MODELS = "/mnt/models"  # where KServe's storage initializer puts storageUri
GPU_RESOURCE = "nvidia.com/gpu"


def triton_image(plan: Plan) -> str:
    return f"nvcr.io/nvidia/tritonserver:{plan.triton_version}-py3"


def tritonflow_image(plan: Plan) -> str:
    """--image, else the tag the written Dockerfile is built as."""
    return plan.options.image or f"tritonflow:{__version__}{'-gpu' if plan.options.gpu else ''}"


def resources(plan: Plan) -> Manifest:
    """Requests as asked; memory capped at the request; no CPU limit (CFS throttling costs latency)."""
    limits: Manifest = {"memory": plan.options.memory}
    if plan.options.gpu:
        limits[GPU_RESOURCE] = 1
    return {"requests": {"cpu": plan.options.cpu, "memory": plan.options.memory}, "limits": limits}


def http_probe(path: str, port: int | str, **timing: int) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, **timing}


def probes(port: int | str) -> Manifest:
    """Ready: every model meant to serve is serving (both servers' strict readiness). Live: the process
    answers. The startup probe gives the first load from S3 five minutes before liveness counts."""
    return {
        "readinessProbe": http_probe("/v2/health/ready", port, periodSeconds=5, failureThreshold=2),
        "livenessProbe": http_probe("/v2/health/live", port, periodSeconds=10, failureThreshold=3),
        "startupProbe": http_probe("/v2/health/live", port, periodSeconds=5, failureThreshold=60),
    }


def _secret_env(plan: Plan, name: str, key: str, optional: bool = False) -> Manifest:
    ref: Manifest = {"name": plan.options.secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def credentials_env(plan: Plan) -> list[Manifest]:
    """The AWS credentials from the Secret (`kubectl create secret generic <--secret> ...`)."""
    env = [
        _secret_env(plan, "AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        _secret_env(plan, "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        _secret_env(plan, "AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", optional=True),
        _secret_env(plan, "AWS_DEFAULT_REGION", "AWS_DEFAULT_REGION", optional=True),
    ]
    if plan.options.runtime == "tritonflow":
        # NOTE: the node's own endpoint variable; from the Secret's AWS_ENDPOINT_URL when it has one
        endpoint = plan.options.s3_endpoint
        env.append(
            {"name": "TRITONFLOW_S3_ENDPOINT_URL", "value": endpoint}
            if endpoint
            else _secret_env(plan, "TRITONFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", optional=True)
        )
    return env


# -- Triton ------------------------------------------------------------------------------------------
def triton_repository(plan: Plan) -> str:
    """The repository as Triton names S3: s3://bucket/prefix, or s3://<endpoint>/bucket/prefix."""
    endpoint = plan.options.s3_endpoint
    return f"s3://{endpoint.rstrip('/')}/{plan.repository[5:]}" if endpoint else plan.repository


# NOTE: the configs tritonflow writes are complete (the FIL backend cannot fill one in): auto-complete
# off, as on `tritonflow serve`; in-flight requests get DRAIN_SECONDS after SIGTERM
_TRITON_COMMON = ["--disable-auto-complete-config", f"--exit-timeout-secs={DRAIN_SECONDS}"]
# The canary revision: serve a copy of /mnt/models (read-only there) whose config.pbtxt names the
# canary (the rewrite `tritonflow promote` makes), then run the runtime's own command line ("$@")
# with its model store pointed at the copy.
_CANARY_SCRIPT = """\
mkdir -p {copy} && cp -R {models}/. {copy} && printf '%s' "$TRITONFLOW_CANARY_CONFIG" > {config} || exit 1
for a do
  shift
  case "$a" in --model-store=*|--model-repository=*) a=--model-store={copy};; esac
  set -- "$@" "$a"
done
exec "$@"
"""


def triton_args(repository: str) -> list[str]:
    """tritonserver on plain Kubernetes: every model of the repository, following it by polling."""
    return [
        "tritonserver",
        f"--model-repository={repository}",
        "--model-control-mode=poll",
        f"--repository-poll-secs={POLL_SECONDS}",
        *_TRITON_COMMON,
        f"--http-port={HTTP}",
        f"--grpc-port={GRPC}",
        f"--metrics-port={METRICS}",
    ]


def triton_kserve(plan: Plan) -> Manifest:
    """KServe's `model` spec for its Triton runtime. KServe appends these args to the runtime's own
    (tritonserver, --model-store=/mnt/models, its ports); only this model is loaded. With a canary in
    the release state, this revision serves only the canary."""
    model = plan.options.model
    spec: Manifest = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "runtimeVersion": f"{plan.triton_version}-py3",  # KServe's image tag for the runtime
        "storageUri": plan.repository,
        "args": ["--model-control-mode=explicit", f"--load-model={model}", *_TRITON_COMMON],
        # NOTE: names the release decision, so that each decision changes the spec: a new revision
        "env": [{"name": "TRITONFLOW_RELEASE", "value": plan.release}],
        "resources": resources(plan),
        **probes(KSERVE_HTTP),
    }
    if plan.canary_config is not None:
        copy = "/tmp/models"
        config = shlex.quote(f"{copy}/{model}/config.pbtxt")
        script = _CANARY_SCRIPT.format(copy=copy, models=KSERVE_MODELS, config=config)
        # NOTE: after `sh -c SCRIPT NAME`, the merged args are the script's "$@"
        spec = {"command": ["/bin/sh", "-c", script, "tritonflow-canary"], **spec}
        spec["env"].append({"name": "TRITONFLOW_CANARY_CONFIG", "value": plan.canary_config})
    return spec


def triton_container(plan: Plan) -> Manifest:
    """Triton on plain Kubernetes: reads S3 itself and follows config.pbtxt (the champion) by polling."""
    return {
        "name": "triton",
        "image": triton_image(plan),
        "args": triton_args(triton_repository(plan)),
        "env": credentials_env(plan),
        "ports": _ports(),
        "resources": resources(plan),
        **probes("http"),
        "lifecycle": _pre_stop(),
    }


# -- tritonflow serve --------------------------------------------------------------------------------
def tritonflow_args(plan: Plan, *, http: int, grpc: int) -> list[str]:
    """The arguments after the image's entrypoint (`tritonflow`): the node follows champion, canary
    and shadow from the repository's release state by itself."""
    return [
        "serve",
        plan.repository,
        "--host=0.0.0.0",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={METRICS}",
        "--model-control-mode=poll",
        f"--poll-interval={POLL_SECONDS}",
        f"--cache-dir={CACHE_DIR}",
        f"--shutdown-timeout={DRAIN_SECONDS}",
    ]


def tritonflow_container(plan: Plan, *, kserve: bool) -> Manifest:
    http, grpc = (KSERVE_HTTP, KSERVE_GRPC) if kserve else (HTTP, GRPC)
    container: Manifest = {
        "name": "kserve-container" if kserve else "tritonflow",
        "image": tritonflow_image(plan),
        "args": tritonflow_args(plan, http=http, grpc=grpc),
        "env": credentials_env(plan),
        # NOTE: Knative routes one port, named http1; gRPC and metrics stay on the pod
        "ports": [{"name": "http1", "containerPort": http}] if kserve else _ports(),
        "resources": resources(plan),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR}],
        **probes(http if kserve else "http"),
    }
    if not kserve:
        container["lifecycle"] = _pre_stop()
    return container


def gpu_toleration() -> Manifest:
    """GPU node pools are commonly tainted nvidia.com/gpu (GKE does so by itself)."""
    return {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def cache_volume() -> Manifest:
    return {"name": "cache", "emptyDir": {}}


def _ports() -> list[Manifest]:
    return [
        {"name": "http", "containerPort": HTTP},
        {"name": "grpc", "containerPort": GRPC},
        {"name": "metrics", "containerPort": METRICS},
    ]


def _pre_stop() -> Manifest:
    """Endpoints are removed while SIGTERM is sent: wait first, so no new request meets a draining server."""
    return {"preStop": {"exec": {"command": ["sleep", str(ENDPOINTS_SECONDS)]}}}
