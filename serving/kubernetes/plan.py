"""What the manifests need from the repository, read once: the model, its release state, and the
Triton release its config is written for. Every refusal (a local folder, a missing model, a config
the chosen Triton cannot load) happens here, before anything is written."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.releases import read_state
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.model_config import ModelConfig, check_config, instance_kind, parameter
from tritonflow.serving.release_policy import champion_config
from tritonflow.serving.triton_releases import NEWEST_TRITON, classifier_key, parse_triton_version

Runtime = Literal["triton", "tritonflow"]
Target = Literal["kserve", "kubernetes"]
CLASSIFIER_KEYS = ("is_classifier", "output_class")
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1035 label: every kind here takes one


@dataclass(frozen=True)
class Options:
    """The command's choices, as given."""

    model: str
    repository: str
    runtime: Runtime = "triton"
    target: Target = "kubernetes"
    name: str | None = None
    triton_version: str | None = None  # None: the version the model's record was written for
    replicas: tuple[int, int] = (1, 3)
    cpu: str = "1"
    memory: str = "2Gi"
    gpu: bool = False
    namespace: str | None = None
    image: str | None = None  # the tritonflow runtime's image; None: tritonflow:<version>[-gpu]
    secret: str = "tritonflow-s3"
    s3_endpoint: str | None = None  # an S3-compatible store (MinIO, Ceph); None: AWS S3
    queue_us: int | None = None  # also scale on the mean queue time per request (the adapter rule)


@dataclass(frozen=True)
class Plan:
    """The options with what the repository says: everything a manifest builder reads."""

    options: Options
    name: str  # the Kubernetes name of every object
    repository: str  # the normalized s3:// URI
    triton_version: str
    champion: int | None  # None: no release decision yet (config.pbtxt's policy serves)
    canary: int | None
    percent: float  # the canary's share of unversioned requests, 0-100
    canary_config: str | None  # config.pbtxt serving only the canary: KServe's canary revision on Triton
    kind: str  # the config's instance kind, "gpu" or "cpu"

    @property
    def release(self) -> str:
        """What the manifests serve, in words; a change is a new KServe revision once applied."""
        served = f"champion v{self.champion}" if self.champion is not None else "no decision (config policy)"
        return served + (f", canary v{self.canary} {self.percent:g}%" if self.canary is not None else "")

    @property
    def labels(self) -> dict[str, str]:
        """The labels every object carries; the Service, HPA and ServiceMonitor select by them."""
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/part-of": "tritonflow"}

    def metadata(self) -> dict[str, Any]:
        """A fresh metadata block: name, namespace (when given), labels, and what is served, from where."""
        meta: dict[str, Any] = {
            "name": self.name,
            "labels": dict(self.labels),
            "annotations": {
                "tritonflow.io/model": self.options.model,
                "tritonflow.io/repository": self.repository,
                "tritonflow.io/release": self.release,
                "tritonflow.io/runtime": self.options.runtime,
            },
        }
        if self.options.namespace:
            meta["namespace"] = self.options.namespace
        return meta

    @property
    def canary_percent(self) -> int | None:
        """KServe's canaryTrafficPercent (a whole number): the share rounded half up, at least 1."""
        return None if self.canary is None else max(1, math.floor(self.percent + 0.5))


def make_plan(options: Options) -> Plan:
    if not options.repository.startswith("s3://"):
        raise TritonflowError(
            f"{options.repository!r} is a local folder: pods in a cluster cannot read a folder on this "
            "machine; publish to S3 (@deploy(repository='s3://bucket/prefix')) and pass --repository s3://..."
        )
    if options.queue_us is not None and options.target == "kserve":
        raise TritonflowError(
            "--scale-on-queue-us drives the plain Deployment's HPA: KServe scales by its own autoscaler "
            "(drop the option, or use --target kubernetes)"
        )
    if options.image is not None and options.runtime == "triton":
        raise TritonflowError("--image is the tritonflow runtime's image: add --runtime tritonflow")
    repository = ModelRepository(options.repository)
    text = repository.read_config(options.model)  # NOTE: a missing model fails here, naming the repository
    config = check_config(text, f"{repository.uri}/{options.model}/config.pbtxt", model_name=options.model)
    versions = repository.versions(options.model)
    if not versions:
        raise TritonflowError(
            f"model {options.model!r} in {repository.uri} has no published version (no deployment.json): "
            "deploy one first"
        )
    state = read_state(repository, options.model)
    record = repository.read_record(options.model, state.champion or versions[-1])
    triton_version = options.triton_version or record.triton_version or NEWEST_TRITON
    kind = instance_kind(config)
    if options.runtime == "triton":
        _check_triton(config, triton_version, kind, options.gpu)
    canary_config = None
    if state.canary is not None and options.runtime == "triton":
        canary_config = champion_config(text, state.canary, f"{options.model}/config.pbtxt")
    return Plan(
        options=options,
        name=_name(options),
        repository=repository.uri,
        triton_version=triton_version,
        champion=state.champion,
        canary=state.canary,
        percent=state.percent,
        canary_config=canary_config,
        kind=kind,
    )


def _check_triton(config: ModelConfig, triton_version: str, kind: str, gpu: bool) -> None:
    """Refuse what the chosen Triton release would refuse to load (it loads nothing else then)."""
    parse_triton_version(triton_version)
    if config.backend == "fil":
        wanted = classifier_key(triton_version)
        written = [key for key in CLASSIFIER_KEYS if parameter(config, key) is not None]
        if written and wanted not in written:
            raise TritonflowError(
                f"config.pbtxt says {written[0]!r}, which the FIL backend of Triton {triton_version} ignores "
                f"(it wants {wanted!r}): pass --triton-version for the release the model was deployed for, "
                "or redeploy with @deploy(triton_version=...)"
            )
    if kind == "gpu" and not gpu:
        raise TritonflowError(
            "config.pbtxt asks for KIND_GPU, which Triton cannot load on a node without a GPU: pass --gpu "
            "(one nvidia.com/gpu per pod), or deploy with @deploy(instance_kind='cpu')"
        )


def _name(options: Options) -> str:
    """--name, else the model's name made a DNS-1035 label ('Fraud_v2.1' -> 'fraud-v2-1')."""
    given = options.name
    name = given or re.sub(r"[^a-z0-9]+", "-", options.model.lower()).strip("-")
    if not given and name and not name[0].isalpha():
        name = f"model-{name}"
    if not _NAME.fullmatch(name):
        raise TritonflowError(
            f"{name!r} is not a Kubernetes name (1-63 lowercase letters, digits or '-', starting with a "
            "letter): pass --name"
        )
    return name
