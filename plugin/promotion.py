"""@deploy(promote=...): whether the new version becomes champion, and the scores that decided it.

The decision is made before publishing (the record carries it), and takes effect after: the config
is written serving the current champion, so a version that is not promoted never serves unversioned
requests. `if_better` scores both models through the serving backends on the same rows: the
champion from its published files (checked and loaded as the node loads them), the new model from
its exported files, so what is compared is what would serve.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics

from tritonflow.lineage import releases
from tritonflow.lineage.errors import NotFound, TritonflowError
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import PromoteRule
from tritonflow.serving.backends import load_backend
from tritonflow.serving.loading import published_backend
from tritonflow.serving.model_config import ModelConfig, parse_config, served_versions
from tritonflow.serving.release_policy import champion_config

_REGRESSION = ("rmse", "mae", "r2")


class PromotionError(TritonflowError):
    """promote='if_better:...' cannot score the models as asked."""


@dataclass(frozen=True)
class Decision:
    rule: PromoteRule
    promote: bool  # the new version becomes champion
    champion: int | None  # the champion before this deploy
    reason: str  # "roc_auc 0.61 < champion v2's 0.93"; "" when the rule alone decided
    evaluation: dict[str, Any] | None = None

    @property
    def event_reason(self) -> str:
        return f"@deploy promote={self.rule}" + (f": {self.reason}" if self.reason else "")

    def to_record(self) -> dict[str, Any]:
        """The record's `release`: the decision, made against `champion`. The record is written before
        the decision takes effect, so whether it did is the release log's (an event naming the version)."""
        return {
            "promote": str(self.rule),
            "promoted": self.promote,
            "champion": self.champion,
            "reason": self.reason,
            "evaluation": self.evaluation,
            "pending": self.rule.mode == "on_success" and not self.promote,  # on_success.py settles it
        }

    @classmethod
    def from_record(cls, release: dict[str, Any]) -> Decision:
        return cls(
            PromoteRule.parse(release.get("promote", "always")),
            bool(release.get("promoted")),
            release.get("champion"),
            release.get("reason", ""),
            release.get("evaluation"),
        )


def describe(record: DeploymentRecord) -> str:
    """The step's log line, from the decision in the record and its effect in the release log:
    'fraud-classifier:3 not promoted (promote=if_better:roc_auc): roc_auc 0.61 < champion v2's 0.93'."""
    release = record.release or {}
    rule = release.get("promote", "always")
    reason = release.get("reason") or ""
    done = "not promoted"
    if release.get("promoted"):
        state = releases.read_state(ModelRepository(record.repository), record.model_name)
        if any(e.kind == "promote" and e.version == record.version for e in state.events):
            done = "promoted"
        else:  # NOTE: the decision lost a race (settle): say so, rather than what was decided
            how = (
                f"`tritonflow promote {record.repository} {record.model_name}:{record.version} --reason ...`"
            )
            reason = (
                f"{reason + '; ' if reason else ''}but v{state.champion} became champion while this deploy "
                f"scored (the decision was against {_name(release.get('champion'))}), so it stays a "
                f"challenger: promote it by hand if it should serve ({how})"
            )
    return f"{record.model_name}:{record.version} {done} (promote={rule})" + (f": {reason}" if reason else "")


def champion(repository: ModelRepository, model: str) -> int | None:
    """The release state's champion; for a model published before releases, the newest version its
    config serves (what `latest 1` made champion); None for a model not published yet."""
    try:
        state = releases.read_state(repository, model)
        if state.champion is not None:
            return state.champion
        config = parse_config(repository.read_config(model))
    except NotFound:
        return None
    served = served_versions(config, repository.versions(model))
    return served[-1] if served else None


def decide(
    rule: PromoteRule,
    repository: ModelRepository,
    model: str,
    new: tuple[dict[str, bytes], ModelConfig] | Callable[[], np.ndarray],
    sample: tuple[Any, Any],
    labels: Any,
    classes: Sequence[str],
    published: Callable[[int], np.ndarray] | None = None,
) -> Decision:
    """`new`: the exported files and the generated config (or what the new version answers on the
    rows); `sample`: the sample and its rows that if_better scores on (its first SAMPLE_ROWS, as the
    parity gate), with `labels`, one per sample row; `published`: what a published version answers
    on those rows (default: the version loaded as the node loads it, fed the rows)."""
    rows = sample[1]
    # NOTE: checked before anything else, so a wrong labels artifact fails the first deploy too
    truth = _labels(labels, sample, classes, rule.metric or "") if rule.mode == "if_better" else np.empty(0)
    current = champion(repository, model)
    if current is None:
        return Decision(rule, True, None, "the model has no champion yet")
    if rule.mode == "always":
        return Decision(rule, True, current, "")
    if rule.mode == "never":
        return Decision(rule, False, current, f"published as a challenger, v{current} stays champion")
    if rule.mode == "on_success":
        return Decision(rule, False, current, f"champion once its run succeeds; v{current} stays until then")
    metric = rule.metric or ""
    answered = new() if callable(new) else _predict_new(*new, rows)
    new_score = score(metric, answered, truth, classes)
    evaluation: dict[str, Any] = {"metric": metric, "rows": len(rows), "new": new_score}
    try:
        served = published(current) if published else _predict_published(repository, model, current, rows)
    except TritonflowError as exc:  # NOTE: a champion that does not load serves nobody: replace it
        evaluation["champion"] = {"version": current, "error": str(exc)}
        return Decision(rule, True, current, f"champion v{current} does not load ({exc})", evaluation)
    old_score = score(metric, served, truth, classes)
    evaluation["champion"] = {"version": current, "score": old_score}
    better = new_score > old_score if rule.higher_is_better else new_score < old_score
    sign = (">" if new_score > old_score else "<") if new_score != old_score else "="
    reason = f"{metric} {new_score:.4g} {sign} champion v{current}'s {old_score:.4g}"
    return Decision(rule, better, current, reason, evaluation)


def settle(repository: ModelRepository, record: DeploymentRecord) -> None:
    """After the publish, and again on a retried task that had published: the decision in the record
    takes effect (the promote event and its config), or the config is kept on the champion. Idempotent:
    once any event names the version, it was settled, and a later event may have replaced it since."""
    if record.release is None:  # NOTE: published before releases: nothing was decided
        return
    decision = Decision.from_record(record.release)
    state = releases.read_state(repository, record.model_name)
    if any(record.version in (e.version, e.previous, e.canary, e.shadow) for e in state.events):
        return
    target = record.version if decision.promote else decision.champion
    # NOTE: not promoting in a model that `latest 1` served: its champion is written down, so it stays
    if target is None or not (decision.promote or state.champion is None):
        releases.apply_state(repository, state, champion_config)  # NOTE: a promotion since then wins
        return
    try:
        releases.promote(
            repository,
            record.model_name,
            target,
            champion_config,
            reason=decision.event_reason,
            evaluation=decision.evaluation,
            replacing=decision.champion,
        )
    except releases.ReleaseConflict:  # NOTE: another champion took over while this deploy scored: the
        # version stays a challenger (describe() says so), and the config, which the publish wrote
        # serving the champion decided against, follows the log again
        releases.apply_state(repository, releases.read_state(repository, record.model_name), champion_config)


def score(metric: str, output: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> float:
    """`metric` of a served output (classifiers: class probabilities in `classes` order) on `truth`
    (class column indices, or values for a regressor)."""
    try:
        if metric in _REGRESSION:
            values = output.reshape(len(truth))
            if metric == "rmse":
                return math.sqrt(metrics.mean_squared_error(truth, values))
            return float(
                (metrics.mean_absolute_error if metric == "mae" else metrics.r2_score)(truth, values)
            )
        k = len(classes)
        probabilities = output.reshape(len(truth), k)
        positive = probabilities[:, 1] if k == 2 else probabilities
        if metric == "roc_auc":
            return float(metrics.roc_auc_score(truth, positive, multi_class="ovr", labels=range(k)))
        if metric == "average_precision":
            target = truth if k == 2 else np.eye(k)[truth]
            return float(metrics.average_precision_score(target, positive))
        if metric == "log_loss":
            return float(metrics.log_loss(truth, probabilities, labels=range(k)))
        predicted = probabilities.argmax(axis=1)
        if metric == "accuracy":
            return float(metrics.accuracy_score(truth, predicted))
        return float(metrics.f1_score(truth, predicted, average="binary" if k == 2 else "macro"))
    except ValueError as exc:
        raise PromotionError(f"cannot score {metric} on the labels: {exc}") from None


def _labels(labels: Any, sample: tuple[Any, np.ndarray], classes: Sequence[str], metric: str) -> np.ndarray:
    """The labels of the scored rows: class column indices for a classifier, floats for a regressor."""
    if (metric in _REGRESSION) == bool(classes):
        kind = "classifier" if classes else "regressor"
        fits = "accuracy, f1, roc_auc, average_precision, log_loss" if classes else "rmse, mae, r2"
        raise PromotionError(
            f"{metric} does not score a {kind}: use promote='if_better:<metric>' with one of {fits}"
        )
    data, rows = sample
    values = np.asarray(labels).reshape(-1)
    total = getattr(data, "shape", None)
    total = total[0] if total else len(data)
    if len(values) != total:
        raise PromotionError(
            f"labels has {len(values)} values but the sample has {total} rows: "
            "pass one label per sample row, in the sample's order (e.g. sample='X_val', labels='y_val')"
        )
    values = values[: len(rows)]
    if not classes:
        return values.astype(np.float64)
    column = {name: i for i, name in enumerate(classes)}
    unknown = sorted({str(v) for v in values} - set(column))
    if unknown:
        raise PromotionError(
            f"labels hold {unknown[:5]}, which the model does not predict (its classes: {list(classes)}): "
            "pass the labels the model was trained on"
        )
    return np.array([column[str(v)] for v in values])


def _predict_new(files: dict[str, bytes], config: ModelConfig, rows: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="tritonflow-promote-") as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return _run(load_backend(Path(folder), config), config, rows)


def _predict_published(repository: ModelRepository, model: str, version: int, rows: np.ndarray) -> np.ndarray:
    with published_backend(repository, model, version) as (config, backend):
        return _predict(backend, config, rows)


def _run(backend: Any, config: ModelConfig, rows: np.ndarray) -> np.ndarray:
    try:
        return _predict(backend, config, rows)
    finally:
        backend.unload()


def _predict(backend: Any, config: ModelConfig, rows: np.ndarray) -> np.ndarray:
    return np.asarray(backend.predict({config.input[0].name: rows})[config.output[0].name])


def _name(version: int | None) -> str:
    return f"v{version}" if version is not None else "no champion"
