"""A deployment's input signature, and the rows the parity gate runs, from the model and a sample.

The served input is one FP32 tensor (rows, n_features), features in training order. A sample
(numpy array, pandas DataFrame, list of rows) fixes the width and, for a DataFrame, the feature
names; without one, both come from the model, and the parity rows are generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.exporters import unwrap_pipeline

SAMPLE_ROWS = 1024  # the parity gate runs at most this many of a sample's rows
GENERATED_ROWS = 256
SEED = 0


class SignatureError(TritonflowError):
    """The model's input cannot be described from the model and the sample given."""


@dataclass(frozen=True)
class Signature:
    n_features: int
    feature_names: list[str] | None  # None when neither the sample nor the model names them
    rows: np.ndarray  # float32 (rows, n_features): what the parity gate feeds both models


def describe(model: Any, sample: Any = None) -> Signature:
    """The input signature of `model`, checked against `sample` when one is given."""
    model = unwrap_pipeline(model)  # a passthrough step knows no width; the model behind it does
    width, names = model_width(model), model_feature_names(model)
    if sample is None:
        if width is None:
            raise SignatureError(
                f"cannot tell how many features a {type(model).__name__} reads: pass a sample of input rows "
                "(@deploy(sample='<artifact>'), a numpy array or DataFrame)"
            )
        return Signature(width, names, generated_rows(width))
    rows, sample_names = _sample_rows(sample)
    if width is not None and rows.shape[1] != width:
        raise SignatureError(
            f"the sample has {rows.shape[1]} columns but the {type(model).__name__} reads {width} features: "
            "pass rows shaped like the training data"
        )
    if names is not None and sample_names is not None and sample_names != names:
        raise SignatureError(
            f"the sample's columns {sample_names} are not the model's features in training order {names}: "
            "clients send features in that order, so reorder the sample (df[model.feature_names_in_])"
        )
    return Signature(rows.shape[1], sample_names or names, rows)


def generated_rows(n_features: int) -> np.ndarray:
    """GENERATED_ROWS deterministic rows for the parity gate when no sample is given.

    The scale of the training data is unknown here, so standard normal rows are scaled per row
    across five decades (0.01 to 1000): splits at any usual scale are crossed both ways.
    """
    rng = np.random.default_rng(SEED)
    scales = 10.0 ** rng.uniform(-2.0, 3.0, size=(GENERATED_ROWS, 1))
    return (rng.standard_normal((GENERATED_ROWS, n_features)) * scales).astype(np.float32)


def model_width(model: Any) -> int | None:
    """Features the model reads, when it says: sklearn-style n_features_in_, or a raw Booster's count."""
    width = getattr(model, "n_features_in_", None)
    if width is None and callable(getattr(model, "num_features", None)):  # xgboost.Booster
        width = model.num_features()
    if width is None and callable(getattr(model, "num_feature", None)):  # lightgbm.Booster
        width = model.num_feature()
    return None if width is None else int(width)


def model_feature_names(model: Any) -> list[str] | None:
    """Feature names the model was trained with, when it knows real ones."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = getattr(model, "feature_names", None)  # xgboost.Booster; None when unnamed
    if names is None and callable(getattr(model, "feature_name", None)):  # lightgbm.Booster
        names = model.feature_name()
    if names is None:
        return None
    names = [str(n) for n in names]
    # NOTE: LightGBM names unnamed features Column_0, Column_1, ...: those are not real names.
    return None if names == [f"Column_{i}" for i in range(len(names))] else names


def _sample_rows(sample: Any) -> tuple[np.ndarray, list[str] | None]:
    """At most SAMPLE_ROWS float32 rows of the sample, and its column names when it has them."""
    columns = getattr(sample, "columns", None)
    names = [str(c) for c in columns] if columns is not None else None
    head = sample.head(SAMPLE_ROWS) if hasattr(sample, "head") else sample[:SAMPLE_ROWS]
    try:
        rows = np.asarray(head, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise SignatureError(
            f"the sample is not numeric ({_non_numeric(head) or exc}): the served input is one FP32 tensor, "
            "so encode categorical or text columns in the model (a Pipeline) or before deploying"
        ) from None
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise SignatureError(
            f"the sample has shape {list(rows.shape)}: pass a 2-D batch of rows (rows, features), "
            "e.g. X_train[:100]"
        )
    return rows, names


def _non_numeric(frame: Any) -> str | None:
    if not hasattr(frame, "select_dtypes"):
        return None
    columns = list(frame.select_dtypes(exclude=["number", "bool"]).columns)
    return f"columns {columns} are not numbers" if columns else None
