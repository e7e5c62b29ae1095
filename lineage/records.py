"""The deployment record (`deployment.json`): what was deployed, from which run, and why.

Stable JSON: keys sorted, two-space indent, `schema` names the version of this layout.
Readers ignore keys they do not know, so later versions can add fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from tritonflow.lineage.errors import RepositoryError
from tritonflow.lineage.ids import DeploymentId

SCHEMA = "tritonflow.deployment/v1"
# metaflow.project.branch of a production deploy (Metaflow's branch under --production); a record
# without a project block counts as production's too
PRODUCTION_BRANCH = "prod"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iso_utc(moment: datetime) -> str:
    """The one timestamp format tritonflow writes and prints: ISO 8601 UTC, milliseconds, `Z`.

    A naive datetime is local time (what Metaflow's Client returns: `datetime.fromtimestamp`).
    """
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return iso_utc(datetime.now(UTC))


@dataclass
class DeploymentRecord:
    """One published model version. Nested parts are plain JSON objects, documented in README."""

    deployment_id: str
    model_name: str
    version: int
    created_at: str
    repository: str
    # [{"path": "1/checkpoint.tl", "sha256": ..., "size": ...}], paths relative to the model folder
    files: list[dict[str, Any]]
    format: str  # "treelite" | "onnx"
    backend: str  # Triton backend: "fil" | "onnxruntime"
    config: dict[str, Any]  # summary of config.pbtxt (+ its sha256)
    signature: dict[str, Any]  # {"inputs": [...], "outputs": [...], "n_features", "feature_names"}
    triton_version: str
    exporter: dict[str, str]  # library -> version that wrote the files
    metaflow: dict[str, Any] = field(default_factory=dict)  # flow, run_id, step, task, user, tags, git...
    data: list[dict[str, Any]] = field(default_factory=list)  # training data artifacts
    metrics: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # class, library, hyperparameters
    selection: dict[str, Any] | None = None  # rule, winner, candidates
    release: dict[str, Any] | None = None  # @deploy(promote=...)'s decision and the scores behind it
    reference: dict[str, Any] | None = None  # reference.json (training data profile): path, sha256, size
    # an ensemble's step versions, in the order they run: [{"step", "model", "version", "deployment_id",
    # "format", "backend", "files"}]; empty for any other model
    steps: list[dict[str, Any]] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def id(self) -> DeploymentId:
        return DeploymentId.parse(self.deployment_id)

    @property
    def task_pathspec(self) -> str | None:
        return self.metaflow.get("task")

    @property
    def run_pathspec(self) -> str | None:
        flow, run_id = self.metaflow.get("flow"), self.metaflow.get("run_id")
        return f"{flow}/{run_id}" if flow and run_id else None

    @property
    def pins(self) -> dict[str, int]:
        """An ensemble's step model -> the version it was exported with ({} for other models)."""
        return {step["model"]: int(step["version"]) for step in self.steps}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentRecord:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise RepositoryError(f"deployment record is incomplete: {exc}") from None

    @classmethod
    def from_json(cls, raw: bytes, where: str = "deployment.json") -> DeploymentRecord:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RepositoryError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RepositoryError(f"{where} must hold a JSON object")
        try:
            return cls.from_dict(data)
        except RepositoryError as exc:
            raise RepositoryError(f"{where}: {exc}") from None
