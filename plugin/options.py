"""@deploy's attributes, checked once, before any run starts.

Metaflow hands attributes over as Python values from the decorator call, or as strings from
`--with deploy:name=...`; both are accepted here. Kept free of heavy imports: Metaflow imports
the decorator (and so this module) in every process it starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import check_model_name
from tritonflow.lineage.repository import REPOSITORY_ENV, default_repository
from tritonflow.lineage.store import open_store
from tritonflow.serving.triton_releases import NEWEST_TRITON, parse_triton_version

FORMATS = ("auto", "treelite", "onnx")
INSTANCE_KINDS = ("cpu", "gpu")
_ARTIFACT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# promote="if_better:<metric>": sklearn.metrics names -> whether higher is better
PROMOTE_METRICS = {
    "roc_auc": True,
    "average_precision": True,
    "log_loss": False,
    "accuracy": True,
    "f1": True,
    "rmse": False,
    "mae": False,
    "r2": True,
}


class OptionError(TritonflowError):
    """An @deploy attribute has a value that cannot work."""


@dataclass(frozen=True)
class SelectRule:
    """`max:<artifact>` or `min:<artifact>`: how a join picks the model to deploy."""

    direction: str
    artifact: str

    @classmethod
    def parse(cls, text: str) -> SelectRule:
        direction, _, artifact = str(text).partition(":")
        if direction not in ("max", "min") or not _ARTIFACT_RE.match(artifact):
            raise OptionError(
                f"select={text!r} is not a selection rule: use 'max:<artifact>' or 'min:<artifact>', "
                "e.g. select='max:val_auc'"
            )
        return cls(direction, artifact)

    def __str__(self) -> str:
        return f"{self.direction}:{self.artifact}"


@dataclass(frozen=True)
class PromoteRule:
    """`always`, `never`, `on_success` or `if_better:<metric>`: whether a deploy's version becomes
    champion."""

    mode: str
    metric: str | None = None

    @classmethod
    def parse(cls, text: str) -> PromoteRule:
        mode, colon, metric = str(text).partition(":")
        if (mode in ("always", "never", "on_success") and not colon) or (
            mode == "if_better" and metric in PROMOTE_METRICS
        ):
            return cls(mode, metric or None)
        raise OptionError(
            f"promote={text!r} is not a promotion rule: use 'always' (the default), 'never', 'on_success' or "
            f"'if_better:<metric>' with a metric of {', '.join(PROMOTE_METRICS)}, "
            "e.g. promote='if_better:roc_auc'"
        )

    @property
    def higher_is_better(self) -> bool:
        return PROMOTE_METRICS[self.metric or ""]

    def __str__(self) -> str:
        return f"{self.mode}:{self.metric}" if self.metric else self.mode


@dataclass(frozen=True)
class DeployOptions:
    model: str
    select: SelectRule | None
    name: str
    repository: str
    format: str
    sample: str | None
    metrics: str | None
    instance_kind: str
    max_batch_size: int
    max_queue_delay_us: int
    triton_version: str
    promote: PromoteRule = PromoteRule("always")
    labels: str | None = None
    card: bool = True


def kebab_case(flow_name: str) -> str:
    """FraudFlow -> fraud-flow; XGBoostFlow -> xg-boost-flow (Triton-safe default model name)."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", flow_name)
    return re.sub(r"[^A-Za-z0-9]+", "-", words).strip("-").lower()


def parse_options(
    attributes: dict[str, Any], flow_name: str, is_join: bool, remote: str | None = None
) -> DeployOptions:
    """Check every attribute; `remote` names where the step runs if not here (plugin/remote.py:
    "@kubernetes", "Argo Workflows").

    Every wrong attribute is reported at once (one line each), so one edit fixes them all.
    """
    get = attributes.get
    parsers: dict[str, Callable[[], Any]] = {
        "model": lambda: _artifact(get("model") or "model", "model"),
        "select": lambda: _select(get("select"), is_join),
        "name": lambda: _model_name(get("name"), flow_name),
        "repository": lambda: _repository(get("repository"), remote),
        "format": lambda: _choice(get("format") or "auto", "format", FORMATS),
        "sample": lambda: _artifact(get("sample"), "sample") if get("sample") else None,
        "metrics": lambda: _artifact(get("metrics"), "metrics") if get("metrics") else None,
        "instance_kind": lambda: _choice(get("instance_kind") or "cpu", "instance_kind", INSTANCE_KINDS),
        "max_batch_size": lambda: _integer(get("max_batch_size"), "max_batch_size", 8192, minimum=1),
        "max_queue_delay_us": lambda: _integer(
            get("max_queue_delay_us"), "max_queue_delay_us", 100, minimum=0
        ),
        "triton_version": lambda: _triton_version(get("triton_version")),
        "promote": lambda: _promote(get("promote"), get("sample"), get("labels")),
        "labels": lambda: _artifact(get("labels"), "labels") if get("labels") else None,
        "card": lambda: _flag(get("card"), "card", default=True),
    }
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field, parse in parsers.items():
        try:
            values[field] = parse()
        except TritonflowError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise OptionError(problems[0])
    if problems:
        lines = "".join(f"\n  {problem}" for problem in problems)
        raise OptionError(f"{len(problems)} @deploy attributes are wrong:{lines}")
    return DeployOptions(**values)


def _select(value: Any, is_join: bool) -> SelectRule | None:
    if not value:
        return None
    select = SelectRule.parse(str(value))
    if not is_join:
        raise OptionError(
            f"select={str(select)!r} picks among a join's inputs, but this step is not a join: "
            "put @deploy(select=...) on the join step after the foreach, or drop select"
        )
    return select


def _promote(value: Any, sample: Any, labels: Any) -> PromoteRule:
    rule = PromoteRule.parse(str(value or "always"))
    missing = [name for name, given in (("sample", sample), ("labels", labels)) if not given]
    if rule.mode == "if_better" and missing:
        raise OptionError(
            f"promote={str(rule)!r} scores the new model and the champion on rows with known answers: "
            f"also pass {' and '.join(f'{m}=' for m in missing)} (artifacts of input rows and their labels, "
            "e.g. sample='X_val', labels='y_val'), or use promote='always' or 'never'"
        )
    return rule


def _model_name(value: Any, flow_name: str) -> str:
    name = str(value or kebab_case(flow_name))
    try:
        return check_model_name(name)
    except TritonflowError as exc:
        if value:
            raise OptionError(f"name: {exc}") from None
        raise OptionError(f"name (from the flow name {flow_name!r}): {exc}; pass @deploy(name=...)") from None


def _repository(value: Any, remote: str | None) -> str:
    repository = default_repository(str(value) if value else None)
    try:
        open_store(repository)  # NOTE: parses the URI only; nothing is read or written here
    except (TritonflowError, ValueError) as exc:
        origin = "" if value or not os.environ.get(REPOSITORY_ENV) else f" (from ${REPOSITORY_ENV})"
        raise OptionError(f"repository{origin}: {exc}") from None
    if remote and not repository.startswith("s3://"):
        raise OptionError(
            f"this step runs on {remote}, where the local repository {repository!r} would be lost: "
            "use @deploy(repository='s3://bucket/prefix'), or pass TRITONFLOW_REPOSITORY to the step "
            "with @environment(vars=...)"
        )
    return repository


def _triton_version(value: Any) -> str:
    version = str(value or NEWEST_TRITON)
    parse_triton_version(version)
    return version


def _artifact(value: Any, attribute: str) -> str:
    if not isinstance(value, str) or not _ARTIFACT_RE.match(value):
        raise OptionError(
            f"{attribute}={value!r} must name an artifact (a Python identifier such as 'X_val')"
        )
    return value


def _choice(value: Any, attribute: str, choices: tuple[str, ...]) -> str:
    if str(value) not in choices:
        raise OptionError(f"{attribute}={value!r} is not one of {', '.join(map(repr, choices))}")
    return str(value)


def _flag(value: Any, attribute: str, default: bool) -> bool:
    """A bool from the decorator call, or "true"/"false" from `--with deploy:card=false`."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("true", "false"):
        raise OptionError(f"{attribute}={value!r} must be True or False")
    return text == "true"


def _integer(value: Any, attribute: str, default: int, minimum: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(str(value))
    except ValueError:
        number = None
    if number is None or isinstance(value, bool | float) or number < minimum:
        raise OptionError(f"{attribute}={value!r} must be a whole number >= {minimum}")
    return number
