"""The deployment ID: `<model>:<version>@<flow>/<run_id>`, and its short form `<model>:<version>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonflow.lineage.errors import TritonflowError

# Triton model names become folder names and URL path segments.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ID_RE = re.compile(r"(?P<model>[^:@/\s]+):(?P<version>[1-9][0-9]*)(?:@(?P<flow>[^/\s]+)/(?P<run>[^/\s]+))?")


class InvalidDeploymentId(TritonflowError):
    def __init__(self, text: str) -> None:
        super().__init__(
            f"{text!r} is not a deployment ID: expected '<model>:<version>@<flow>/<run_id>' "
            "(e.g. fraud-classifier:3@FraudFlow/1795314379884117) or the short form "
            "'<model>:<version>'"
        )


def _is_model_name(name: str) -> bool:
    return bool(MODEL_NAME_RE.fullmatch(name)) and ".." not in name


def check_model_name(name: str) -> str:
    """Return `name` if Triton (and a file system) can use it as a model name, else raise."""
    if not _is_model_name(name):
        raise TritonflowError(
            f"{name!r} is not a valid Triton model name: use 1-128 letters, digits, '-', '_' "
            "or '.', starting with a letter or digit (no path separators, '..' or spaces)"
        )
    return name


@dataclass(frozen=True)
class DeploymentId:
    model: str
    version: int
    flow: str | None = None
    run_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> DeploymentId:
        match = _ID_RE.fullmatch(text.strip())
        # NOTE: the model name becomes a repository path: '..' must not reach the store.
        if not match or not _is_model_name(match["model"]):
            raise InvalidDeploymentId(text)
        return cls(match["model"], int(match["version"]), match["flow"], match["run"])

    @property
    def is_short(self) -> bool:
        return self.flow is None

    @property
    def short(self) -> str:
        return f"{self.model}:{self.version}"

    def __str__(self) -> str:
        if self.is_short:
            return self.short
        return f"{self.short}@{self.flow}/{self.run_id}"
