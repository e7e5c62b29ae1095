"""Selection among a join's inputs, with input tasks shaped like Metaflow's datastores."""

import math
from collections import namedtuple

import pytest

from tritonflow.plugin.options import SelectRule
from tritonflow.plugin.selection import SelectionError, select

Frame = namedtuple("Frame", "step var num_splits index value")


class Task:
    def __init__(self, task_id, index, value, **artifacts):
        self.pathspec = f"1/train/{task_id}"
        self.artifacts = {"_foreach_stack": [Frame("start", "kinds", 3, index, value)], **artifacts}

    def __contains__(self, name):
        return name in self.artifacts

    def __getitem__(self, name):
        return self.artifacts[name]


def test_max_picks_the_best_and_records_every_candidate():
    inputs = [Task(4, 0, "rf", auc=0.91), Task(5, 1, "xgb", auc=0.95), Task(6, 2, "lr", auc=0.80)]
    selection, winner = select(SelectRule("max", "auc"), inputs, "F")
    assert winner is inputs[1]
    assert selection.winner.label == "xgb" and selection.winner.task == "F/1/train/5"
    assert [c.label for c in selection.candidates] == ["rf", "xgb", "lr"]
    assert selection.to_record()["candidates"][2]["score"] == 0.80


def test_min_and_ties_break_on_foreach_index():
    inputs = [Task(9, 2, "c", loss=0.1), Task(7, 0, "a", loss=0.1), Task(8, 1, "b", loss=0.3)]
    _, winner = select(SelectRule("min", "loss"), inputs, "F")
    assert winner is inputs[1]


def test_non_finite_scores_never_win():
    inputs = [Task(1, 0, "a", auc=math.nan), Task(2, 1, "b", auc=0.5)]
    selection, winner = select(SelectRule("max", "auc"), inputs, "F")
    assert winner is inputs[1] and selection.candidates[0].score is None
    with pytest.raises(SelectionError, match="no input of the join has a finite 'auc'"):
        select(SelectRule("max", "auc"), [Task(1, 0, "a", auc=math.inf)], "F")


def test_missing_or_non_numeric_scores_are_explained():
    with pytest.raises(SelectionError, match="has no artifact 'auc'"):
        select(SelectRule("max", "auc"), [Task(1, 0, "a")], "F")
    with pytest.raises(SelectionError, match="is not a number"):
        select(SelectRule("max", "auc"), [Task(1, 0, "a", auc="high")], "F")
