"""The reference profile @deploy writes beside a version: the training data's distribution per feature and
the distribution of the model's predictions on the `sample` (lineage/reference.py describes the file).

The training data is the training task's feature matrices that fit the model's signature (`DataRows`,
`fits`): those named for training (X_train, train_rows: `is_training`) when any are, else all of them
together (a task holding X_train and X_test is profiled from X_train alone); a task without one is
profiled from the sample instead.

One sort per feature of a random subsample of PROFILE_ROWS rows carries the bins, quantiles and mean;
min, max and the missing share are exact over every row held (a training artifact keeps at most
TRAINING_ROWS, drawn the same way, so memory stays bounded); 1M rows x 30 features take under a second
(benchmarks/reference_profile.py). The predictions are
the native model's answers in the export's output layout (`Export.native_predict`, which the parity
gate holds equal to what the node serves), on at most PREDICTION_ROWS rows of the sample.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonflow.lineage.records import utc_now
from tritonflow.lineage.reference import SCHEMA, prediction_score

BINS = 10  # equal-frequency bins of the reference, plus open ends
LEVELS = np.linspace(0.0, 1.0, 101)  # quantile levels kept for the KS estimate
PROFILE_ROWS = 200_000  # bins and quantiles from a random subsample: shares to ~0.1%, at a fifth the cost
PREDICTION_ROWS = 100_000
TRAINING_ROWS = 1_000_000  # rows kept per training artifact: 1M x 30 float32 features hold 120 MB


@dataclass(frozen=True)
class DataRows:
    """One training artifact as float32 rows (at most TRAINING_ROWS of them, drawn by `subsample_picks`),
    its record's sha, its column names (a DataFrame's) and its row count before the cap."""

    name: str
    sha: str | None
    rows: np.ndarray
    columns: list[str] | None
    total_rows: int


def data_rows(name: str, sha: str | None, value: Any) -> DataRows | None:
    """`value` as DataRows when it is a numeric 2-D numpy array or DataFrame; None for anything else
    (a target vector, text columns): those are not feature matrices."""
    if getattr(value, "ndim", None) != 2 or hasattr(value, "toarray"):  # scipy.sparse: not profiled
        return None
    picks = subsample_picks(len(value), TRAINING_ROWS)
    head = value if picks is None else value.iloc[picks] if hasattr(value, "iloc") else value[picks]
    try:
        rows = np.asarray(head, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    columns = getattr(value, "columns", None)
    names = [str(c) for c in columns] if columns is not None else None
    return DataRows(name, sha, rows, names, len(value))


def fits(data: DataRows, n_features: int, feature_names: list[str] | None) -> bool:
    """Whether `data` holds rows of the model's input: n_features columns, and a DataFrame's columns
    are the signature's feature names in order (the same width in another order is other data)."""
    width_ok = data.rows.shape[1] == n_features and len(data.rows) > 0
    return width_ok and (data.columns is None or feature_names is None or data.columns == feature_names)


def is_training(name: str) -> bool:
    """Whether an artifact's name says it holds training rows: a word `train` in it (X_train, train,
    train_X, Xtrain), not a validation or test split beside it."""
    return re.search(r"(^x|^|[^a-z])train(ing)?($|[^a-z])", name.lower()) is not None


def reference_profile(
    sample: np.ndarray,
    sample_name: str | None,
    training: Sequence[DataRows],
    signature: tuple[int, list[str] | None],
    predict: Callable[[np.ndarray], np.ndarray],
) -> dict[str, Any]:
    """The profile of the training matrices that fit the `signature` (n_features, feature names),
    else of the sample; the predictions always on the sample (the rows @deploy checked the model on)."""
    n_features, names = signature
    matching = [data for data in training if fits(data, n_features, names)]
    matching = [data for data in matching if is_training(data.name)] or matching
    if not matching:
        source = _source("sample", [(sample_name, None, len(sample))])
        return profile(sample, names, predict, source)
    rows = np.concatenate([data.rows for data in matching])
    source = _source("training", [(data.name, data.sha, data.total_rows) for data in matching])
    return profile(rows, names, predict, source, scored=sample)


def _source(kind: str, artifacts: list[tuple[str | None, str | None, int]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "artifacts": [{"name": name, "sha": sha, "rows": rows} for name, sha, rows in artifacts],
        "rows": sum(rows for _, _, rows in artifacts),
    }


def profile(
    rows: np.ndarray,
    feature_names: list[str] | None,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    source: dict[str, Any] | None = None,
    scored: np.ndarray | None = None,
) -> dict[str, Any]:
    """The reference profile of `rows` (rows, features), as JSON-ready data; the predictions on
    `scored` (default: `rows`)."""
    rows = np.asarray(rows, dtype=np.float32)
    names = feature_names or [f"input__0[{j}]" for j in range(rows.shape[1])]
    sample = _subsample(rows)
    # NOTE: a copy, one contiguous row per feature, sorted in place (the rows themselves must stay as
    # they are: the predictions below run on them); NaNs sort last, so the valid values lead
    ordered = sample.T.copy(order="C")
    ordered.sort(axis=1)
    valid = np.count_nonzero(~np.isnan(ordered), axis=1)
    # the extremes and the missing share over every row: a subsample would miss the rare ones
    missing = np.count_nonzero(np.isnan(rows), axis=0) / len(rows)
    lows, highs = np.fmin.reduce(rows, axis=0), np.fmax.reduce(rows, axis=0)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": utc_now(),
        "source": source,
        "rows": len(rows),
        "profiled_rows": len(sample),
        "levels": LEVELS.tolist(),
        "features": [
            {
                "name": name,
                **column_profile(ordered[j, : valid[j]]),
                "missing": float(missing[j]),
                "min": _number(lows[j]),
                "max": _number(highs[j]),
            }
            for j, name in enumerate(names)
        ],
        "prediction": None,
    }
    if predict is not None:
        predicted = sample if scored is None else _subsample(np.asarray(scored, dtype=np.float32))
        head = predicted[:PREDICTION_ROWS]
        scores = np.sort(prediction_score(predict(head)))
        present = scores[~np.isnan(scores)]
        doc["prediction"] = {
            "name": "prediction",
            "rows": len(head),
            **column_profile(present),
            "missing": 1 - len(present) / len(scores),
        }
    return doc


def _subsample(rows: np.ndarray) -> np.ndarray:
    picks = subsample_picks(len(rows), PROFILE_ROWS)
    return rows if picks is None else rows[picks]


def subsample_picks(n: int, limit: int) -> np.ndarray | None:
    """Indices of at most `limit` of `n` rows, drawn at random (seeded: the same rows profile the same),
    in order; None when all `n` fit."""
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(0).integers(0, n, limit))


def _number(value: np.floating) -> float | None:
    return None if np.isnan(value) else float(value)


def column_profile(ordered: np.ndarray) -> dict[str, Any]:
    """Bins, shares, quantiles, extremes and mean of one column's sorted non-missing values."""
    n = len(ordered)
    if n == 0:
        return {"edges": [], "shares": [], "min": None, "max": None, "mean": None, "quantiles": []}

    def at(levels: np.ndarray) -> np.ndarray:
        return ordered[(levels * (n - 1)).round().astype(np.int64)]

    edges = np.unique(at(np.arange(1, BINS) / BINS)).astype(np.float64)
    # NOTE: bin i holds the values v with edges[i-1] < v <= edges[i]: a count of values <= each edge
    below = np.searchsorted(ordered, edges.astype(ordered.dtype), side="right")
    counts = np.diff(np.concatenate([[0], below, [n]]))
    return {
        "edges": edges.tolist(),
        "shares": (counts / n).tolist(),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
        "mean": float(ordered.mean(dtype=np.float64)),
        "quantiles": at(LEVELS).astype(np.float64).tolist(),
    }


def sample_matrix(sample: Any) -> np.ndarray:
    """Every row of the sample (numpy, pandas or scipy.sparse) as float32, as the model is served them."""
    return np.asarray(sample.toarray() if hasattr(sample, "toarray") else sample, dtype=np.float32)


def profile_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
