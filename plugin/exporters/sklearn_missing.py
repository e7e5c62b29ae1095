"""Where scikit-learn's trees send a missing value, written into what the converters make of them.

scikit-learn's trees (1.3+) learn a side per split for a missing value (`tree_.missing_go_to_left`:
from the training rows that had one, else the larger child). Neither converter carries it: Treelite
4.7's importer of the `estimators_` forests and boosters writes "left" at every split, skl2onnx 1.20
"false" (right) at every node, so a row with a NaN went down other paths than scikit-learn's
(probabilities off by up to 1.0, seen on both). HistGradientBoosting keeps its own sides in
Treelite's importer and has no `tree_`. The parity gate scores rows with missing values to hold it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import ExportError


def fitted_trees(estimator: Any) -> list[Any]:
    """The estimator's scikit-learn trees (`tree_`) in the order converters number them: a tree
    itself, a forest's, a booster's round by round, class by class; [] for anything else."""
    if hasattr(estimator, "tree_"):
        trees = [estimator.tree_]
    else:
        members = np.asarray(getattr(estimator, "estimators_", []), dtype=object).ravel()
        trees = [member.tree_ for member in members if hasattr(member, "tree_")]
        if len(trees) != len(members):
            return []
    return trees if trees and hasattr(trees[0], "missing_go_to_left") else []


def route_missing_in_treelite(checkpoint: Any, estimator: Any) -> None:
    """Set each split's default side in Treelite's import of `estimator` to scikit-learn's."""
    trees = fitted_trees(estimator)
    if not trees:
        return
    if len(trees) != checkpoint.num_tree:
        raise ExportError(
            f"it imported {checkpoint.num_tree} trees of the {len(trees)} in {type(estimator).__name__} "
            "(this Treelite lays scikit-learn's trees out otherwise than 4.7)"
        )
    for index, tree in enumerate(trees):
        sides = tree.missing_go_to_left.astype(np.uint8)
        checkpoint.get_tree_accessor(index).set_field("default_left", sides)


def route_missing_in_onnx(graph: Any, model: Any) -> None:
    """Set `nodes_missing_value_tracks_true` of each tree ensemble node in skl2onnx's `graph` of
    `model` to scikit-learn's sides, from the estimator in `model` whose trees it holds (node for
    node, split features alike). A node matched by none keeps its sides: the parity gate judges it."""
    forests = [trees for trees in map(fitted_trees, estimators_within(model)) if trees]
    for node in graph.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        if "nodes_missing_value_tracks_true" not in attributes:
            continue
        tree_ids = np.asarray(attributes["nodes_treeids"].ints)
        node_ids = np.asarray(attributes["nodes_nodeids"].ints)
        features = np.asarray(attributes["nodes_featureids"].ints)
        branches = np.asarray(attributes["nodes_modes"].strings) != b"LEAF"
        trees = next((t for t in forests if _holds(t, tree_ids, node_ids, features, branches)), None)
        if trees is not None:
            sides = np.concatenate([tree.missing_go_to_left for tree in trees]).astype(np.int64)
            attributes["nodes_missing_value_tracks_true"].ints[:] = sides[
                _offsets(trees)[tree_ids] + node_ids
            ].tolist()


def estimators_within(model: Any) -> list[Any]:
    """`model` and every scikit-learn estimator it holds, the fitted ones too (a Pipeline's steps,
    a Bagging's or a Stacking's `estimators_`, a forest's trees), each once."""
    from sklearn.base import BaseEstimator

    found: dict[int, Any] = {}
    pending = [model]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseEstimator):
            if id(item) not in found:
                found[id(item)] = item
                pending.extend(vars(item).values())
        elif isinstance(item, list | tuple) or (isinstance(item, np.ndarray) and item.dtype == object):
            pending.extend(item.ravel() if isinstance(item, np.ndarray) else item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return list(found.values())


def _holds(
    trees: list[Any], tree_ids: np.ndarray, node_ids: np.ndarray, features: np.ndarray, branches: np.ndarray
) -> bool:
    """Whether a tree ensemble node's (tree, node) entries are exactly these trees' nodes, each once,
    with the same split features (one sort: a 500-tree forest is matched in milliseconds)."""
    counts = [tree.node_count for tree in trees]
    if len(tree_ids) != sum(counts):
        return False
    order = np.lexsort((node_ids, tree_ids))
    expected_trees = np.repeat(np.arange(len(trees)), counts)
    expected_nodes = np.arange(len(tree_ids)) - np.repeat(_offsets(trees), counts)
    if not (
        np.array_equal(tree_ids[order], expected_trees) and np.array_equal(node_ids[order], expected_nodes)
    ):
        return False
    split = branches[order]
    expected_features = np.concatenate([tree.feature for tree in trees])
    return np.array_equal(features[order][split], expected_features[split])


def _offsets(trees: list[Any]) -> np.ndarray:
    """Where each tree's nodes start when the trees' nodes are laid end to end."""
    return np.concatenate([[0], np.cumsum([tree.node_count for tree in trees])[:-1]]).astype(np.int64)
