"""The reference profile @deploy writes beside a version: the `sample`'s distribution per feature and
the distribution of the model's predictions on it (lineage/reference.py describes the file).

One sort per feature of a random subsample of PROFILE_ROWS rows carries the bins, quantiles and mean;
min, max and the missing share are exact over every row; 1M rows x 30 features take under a second
(benchmarks/reference_profile.py). The predictions are
the native model's answers in the export's output layout (`Export.native_predict`, which the parity
gate holds equal to what the node serves), on at most PREDICTION_ROWS rows of the sample.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from tritonflow.lineage.records import utc_now
from tritonflow.lineage.reference import SCHEMA, prediction_score

BINS = 10  # equal-frequency bins of the reference, plus open ends
LEVELS = np.linspace(0.0, 1.0, 101)  # quantile levels kept for the KS estimate
PROFILE_ROWS = 200_000  # bins and quantiles from a random subsample: shares to ~0.1%, at a fifth the cost
PREDICTION_ROWS = 100_000


def profile(
    rows: np.ndarray,
    feature_names: list[str] | None,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """The reference profile of `rows` (rows, features), as JSON-ready data."""
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
        head = sample[:PREDICTION_ROWS]
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
    """At most PROFILE_ROWS rows, drawn at random (seeded: the same sample profiles the same), in order."""
    if len(rows) <= PROFILE_ROWS:
        return rows
    picks = np.random.default_rng(0).integers(0, len(rows), PROFILE_ROWS)
    return rows[np.sort(picks)]


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
