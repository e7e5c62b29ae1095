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

A tabular ensemble (`ensemble_profile`) is profiled per column of the DataFrame its clients send:
numeric columns as above, string and category columns as the shares of their most frequent values
(schema v2, lineage/reference.py). Its training data is the training task's DataFrames with the
sample's columns (`training_artifact` keeps those with text columns as `FrameRows`), by the same
`is_training` rule, else the sample; its predictions the native pipeline's on the sample.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.lineage.records import utc_now
from tritonflow.lineage.reference import (
    CATEGORICAL,
    COLUMNS_SCHEMA,
    LAYOUT_COLUMNS,
    MAX_CATEGORIES,
    NUMERIC,
    SCHEMA,
    prediction_score,
)
from tritonflow.serving.frames import MISSING_STRING

if TYPE_CHECKING:
    import pandas as pd

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


@dataclass(frozen=True)
class FrameRows:
    """A training DataFrame holding string or category columns (a tabular pipeline's data), at most
    TRAINING_ROWS of its rows (drawn by `subsample_picks`), its record's sha and its row count."""

    name: str
    sha: str | None
    frame: pd.DataFrame
    total_rows: int


def training_artifact(name: str, sha: str | None, value: Any) -> DataRows | FrameRows | None:
    """A training artifact as the reference profile takes it: a numeric matrix as DataRows, a
    DataFrame with string or category columns as FrameRows (an ensemble's training data), anything
    else None."""
    rows = data_rows(name, sha, value)
    if rows is not None or getattr(value, "ndim", None) != 2 or not hasattr(value, "iloc"):
        return rows
    picks = subsample_picks(len(value), TRAINING_ROWS)
    return FrameRows(name, sha, value if picks is None else value.iloc[picks], len(value))


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
    training: Sequence[DataRows | FrameRows],
    signature: tuple[int, list[str] | None],
    predict: Callable[[np.ndarray], np.ndarray],
) -> dict[str, Any]:
    """The profile of the training matrices that fit the `signature` (n_features, feature names),
    else of the sample; the predictions always on the sample (the rows @deploy checked the model on)."""
    n_features, names = signature
    matching = [d for d in training if isinstance(d, DataRows) and fits(d, n_features, names)]
    matching = [data for data in matching if is_training(data.name)] or matching
    if not matching:
        source = _source("sample", [(sample_name, None, len(sample))])
        return profile(sample, names, predict, source)
    rows = np.concatenate([data.rows for data in matching])
    source = _source("training", [(data.name, data.sha, data.total_rows) for data in matching])
    return profile(rows, names, predict, source, scored=sample)


def ensemble_profile(
    sample: pd.DataFrame,
    sample_name: str | None,
    training: Sequence[DataRows | FrameRows],
    columns: list[tuple[str, str]],
    predict: Callable[[pd.DataFrame], np.ndarray],
) -> dict[str, Any]:
    """The profile of an ensemble's inputs, a feature per (column, Triton datatype) in `columns`
    (BYTES ones categorical), of the training frames whose columns are those (the ones named for
    training when any are), else of the sample; the predictions always on the sample."""
    import pandas as pd

    names = [name for name, _ in columns]
    frames, wanted = [(data, _as_frame(data)) for data in training], sorted(names)
    matching = [(data, f) for data, f in frames if f is not None and sorted(map(str, f.columns)) == wanted]
    matching = [(data, f) for data, f in matching if is_training(data.name)] or matching
    if matching:
        data = pd.concat([f[names] for _, f in matching], ignore_index=True)
        source = _source("training", [(d.name, d.sha, d.total_rows) for d, _ in matching])
    else:
        data, source = sample, _source("sample", [(sample_name, None, len(sample))])
    numeric = [name for name, datatype in columns if datatype != "BYTES"]
    rows = data[numeric].to_numpy(np.float32, na_value=np.nan)
    profiled, profiled_rows = numeric_features(rows, numeric)
    by_name = {f["name"]: {"kind": NUMERIC, **f} for f in profiled}
    picks = subsample_picks(len(sample), PROFILE_ROWS)
    scored = sample if picks is None else sample.iloc[picks]
    return {
        "schema": COLUMNS_SCHEMA,
        "layout": LAYOUT_COLUMNS,
        "created_at": utc_now(),
        "source": source,
        "rows": len(data),
        "profiled_rows": profiled_rows if numeric else len(data),
        "levels": LEVELS.tolist(),
        "features": [by_name.get(name) or category_profile(name, data[name]) for name in names],
        "prediction": prediction_profile(predict(scored.iloc[:PREDICTION_ROWS])),
    }


def _as_frame(data: DataRows | FrameRows) -> pd.DataFrame | None:
    """A training artifact as a DataFrame by column name; None for a matrix without names."""
    import pandas as pd

    if isinstance(data, FrameRows):
        return data.frame
    return None if data.columns is None else pd.DataFrame(data.rows, columns=data.columns)


def category_profile(name: str, values: pd.Series) -> dict[str, Any]:
    """The shares of a string or category column's most frequent values (as clients send them:
    str of the value), of the rest, and of its missing values (None, NaN, or "" as sent)."""
    text = values.astype(object)
    missing = text.isna().to_numpy() | (text == MISSING_STRING).to_numpy()
    present = text[~missing].map(str)
    # NOTE: most frequent first, ties by value: the same data gives the same file
    counts = present.value_counts().sort_index().sort_values(ascending=False, kind="stable")
    kept, n = counts.iloc[:MAX_CATEGORIES], max(len(present), 1)
    return {
        "name": name,
        "kind": CATEGORICAL,
        "values": kept.index.tolist(),
        "shares": (kept.to_numpy() / n).tolist(),
        "other": float(counts.iloc[MAX_CATEGORIES:].sum() / n),
        "distinct": len(counts),
        "missing": float(missing.mean()) if len(missing) else 0.0,
    }


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
    features, profiled = numeric_features(rows, names)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": utc_now(),
        "source": source,
        "rows": len(rows),
        "profiled_rows": profiled,
        "levels": LEVELS.tolist(),
        "features": features,
        "prediction": None,
    }
    if predict is not None:
        predicted = _subsample(rows if scored is None else np.asarray(scored, dtype=np.float32))
        doc["prediction"] = prediction_profile(predict(predicted[:PREDICTION_ROWS]))
    return doc


def numeric_features(rows: np.ndarray, names: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Each column of float32 `rows` profiled, and how many rows the bins and quantiles came from."""
    sample = _subsample(rows)
    # NOTE: a copy, one contiguous row per feature, sorted in place (the rows themselves must stay as
    # they are: the predictions run on them); NaNs sort last, so the valid values lead
    ordered = sample.T.copy(order="C")
    ordered.sort(axis=1)
    valid = np.count_nonzero(~np.isnan(ordered), axis=1)
    # the extremes and the missing share over every row: a subsample would miss the rare ones
    missing = np.count_nonzero(np.isnan(rows), axis=0) / max(len(rows), 1)
    lows, highs = np.fmin.reduce(rows, axis=0), np.fmax.reduce(rows, axis=0)
    features = [
        {
            "name": name,
            **column_profile(ordered[j, : valid[j]]),
            "missing": float(missing[j]),
            "min": _number(lows[j]),
            "max": _number(highs[j]),
        }
        for j, name in enumerate(names)
    ]
    return features, len(sample)


def prediction_profile(outputs: np.ndarray) -> dict[str, Any]:
    """The distribution of the model's score per row (`prediction_score`) over its `outputs`."""
    scores = np.sort(prediction_score(outputs))
    present = scores[~np.isnan(scores)]
    return {
        "name": "prediction",
        "rows": len(scores),
        **column_profile(present),
        "missing": 1 - len(present) / len(scores),
    }


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
