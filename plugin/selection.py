"""Pick the model to deploy among a join's inputs, and remember every candidate it beat."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.options import SelectRule


class SelectionError(TritonflowError):
    """The join's inputs cannot be ranked by the selection rule."""


class InputTask(Protocol):
    """What selection reads of a join input (Metaflow's TaskDataStore has this shape)."""

    pathspec: str  # run/step/task

    def __contains__(self, name: str) -> bool: ...
    def __getitem__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Candidate:
    label: str  # the foreach value that produced it, else the step name
    score: float | None  # None when the score is not a finite number (never selected)
    task: str  # full task pathspec: flow/run/step/task
    index: int  # position in the foreach (or the join's input order): the tie-breaker


@dataclass(frozen=True)
class Selection:
    rule: SelectRule
    winner: Candidate
    candidates: tuple[Candidate, ...]

    def to_record(self) -> dict[str, Any]:
        return {
            "rule": str(self.rule),
            "metric": self.rule.artifact,
            "direction": self.rule.direction,
            "winner": asdict(self.winner),
            "candidates": [asdict(c) for c in self.candidates],
        }


def select(rule: SelectRule, inputs: Sequence[InputTask], flow_name: str) -> tuple[Selection, InputTask]:
    """The best input by `rule`; ties go to the lowest foreach index, so reruns choose alike."""
    if not inputs:
        raise SelectionError("the join has no inputs to select from")
    candidates = [_candidate(rule, task, position, flow_name) for position, task in enumerate(inputs)]
    ranked = [c for c in candidates if c.score is not None]
    if not ranked:
        raise SelectionError(
            f"no input of the join has a finite {rule.artifact!r}: "
            + ", ".join(f"{c.task}={inputs[i][rule.artifact]!r}" for i, c in enumerate(candidates))
        )
    sign = -1.0 if rule.direction == "max" else 1.0
    winner = min(ranked, key=lambda c: (sign * (c.score or 0.0), c.index, c.task))
    by_task = {f"{flow_name}/{task.pathspec}": task for task in inputs}
    ordered = tuple(sorted(candidates, key=lambda c: c.index))
    return Selection(rule, winner, ordered), by_task[winner.task]


def _candidate(rule: SelectRule, task: InputTask, position: int, flow_name: str) -> Candidate:
    pathspec = f"{flow_name}/{task.pathspec}"
    if rule.artifact not in task:
        raise SelectionError(
            f"input {pathspec} has no artifact {rule.artifact!r} to rank by: set "
            f"self.{rule.artifact} in the step before the join, or change select={str(rule)!r}"
        )
    raw = task[rule.artifact]
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise SelectionError(
            f"{pathspec}: {rule.artifact}={raw!r} is not a number, so it cannot be ranked"
        ) from None
    label, index = _foreach_position(task, position)
    return Candidate(label, score if math.isfinite(score) else None, pathspec, index)


def _foreach_position(task: InputTask, position: int) -> tuple[str, int]:
    stack = task["_foreach_stack"] if "_foreach_stack" in task else []
    if stack:
        frame = stack[-1]
        return str(frame.value if frame.value is not None else frame.index), int(frame.index)
    return task.pathspec.split("/")[1], position
