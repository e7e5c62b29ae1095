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
from tritonflow.plugin.exporters.base import library_errors
from tritonflow.plugin.model_checks import check_trained, string_columns

SAMPLE_ROWS = 1024  # the parity gate runs at most this many of a sample's rows
GENERATED_ROWS = 256
SEED = 0
NUMERIC_ONLY = (
    "a model takes one FP32 tensor unless it is a scikit-learn Pipeline of preprocessing and a tree "
    "model (XGBoost, LightGBM, scikit-learn's forests), or a LightGBM or XGBoost model trained on pandas "
    "category columns, deployed with a DataFrame sample: that is served as a Triton ensemble taking each "
    "column by name, strings included. Pass the DataFrame as sample, make the model such a Pipeline "
    "(e.g. a ColumnTransformer with a OneHotEncoder or OrdinalEncoder for the string columns, then the "
    "trees), or encode the string columns before the model"
)


class SignatureError(TritonflowError):
    """The model's input cannot be described from the model and the sample given."""


@dataclass(frozen=True)
class Signature:
    n_features: int
    feature_names: list[str] | None  # None when neither the sample nor the model names them
    rows: np.ndarray  # float32 (rows, n_features): what the parity gate feeds both models


def describe(model: Any, sample: Any = None) -> Signature:
    """The input signature of `model`, checked against `sample` when one is given."""
    check_trained(model)
    with library_errors(type(model).__name__, "reading the input signature of"):
        _refuse_string_inputs(model)
        model = unwrap_pipeline(model)  # a passthrough step knows no width; the model behind it does
        width, names = model_width(model), model_feature_names(model)
    if width == 0:
        raise SignatureError(
            f"the {type(model).__name__} was trained on 0 features: train it on input columns"
        )
    if sample is None:
        if width is None and not callable(getattr(model, "predict", None)):
            raise SignatureError(
                f"the model artifact is {repr(model)[:60]} (a {type(model).__name__}), not a trained model: "
                "assign the fitted model object itself (load a saved one first, e.g. joblib.load(path))"
            )
        if width is None:
            raise SignatureError(
                f"cannot tell how many features a {type(model).__name__} reads: pass a sample of input rows "
                "(@deploy(sample='<artifact>'), a numpy array or DataFrame)"
            )
        return Signature(width, names, generated_rows(width))
    rows, sample_names = sample_rows(sample)
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


def _refuse_string_inputs(model: Any) -> None:
    strings = string_columns(model)
    if strings:
        raise SignatureError(
            f"the {type(model).__name__} reads the columns {strings} as strings or categories, which one "
            f"FP32 tensor cannot carry (with a numpy sample, or none, it would be served so): {NUMERIC_ONLY}"
        )


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


def check_sample(sample: Any) -> None:
    """What @deploy checks of the sample before the step: rows of input. A DataFrame may hold
    strings (a Pipeline that encodes them is served as an ensemble); that is known after the step."""
    if hasattr(sample, "columns") and hasattr(sample, "head"):
        if len(sample) == 0 or len(sample.columns) == 0:
            raise SignatureError(
                f"the sample has {len(sample)} rows and {len(sample.columns)} columns: pass rows of "
                "input shaped like the training data, e.g. X_val.head(100)"
            )
        return
    sample_rows(sample)


def sample_rows(sample: Any) -> tuple[np.ndarray, list[str] | None]:
    """At most SAMPLE_ROWS float32 rows of the sample, and its column names when it has them.

    Needs no model, so @deploy also runs it on the sample as the step's inputs hold it, before the step.
    """
    columns = getattr(sample, "columns", None)
    names = [str(c) for c in columns] if columns is not None else None
    try:
        head = sample.head(SAMPLE_ROWS) if hasattr(sample, "head") else sample[:SAMPLE_ROWS]
    except (TypeError, KeyError):  # a dict, a number, ...: nothing that has rows
        head = None
    if hasattr(head, "toarray"):  # scipy.sparse: the served tensor is dense
        head = head.toarray()
    try:
        rows = np.asarray(head, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        strings = _not_numbers(head)
        raise SignatureError(
            f"the sample's columns {strings} are not numbers: {NUMERIC_ONLY}"
            if strings
            else f"the sample is not numeric ({exc}): pass rows of numbers shaped like the training data"
        ) from None
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        kind = f"shape {list(rows.shape)}" if head is not None else f"no rows (a {type(sample).__name__})"
        raise SignatureError(
            f"the sample has {kind}: pass a 2-D batch of rows (rows, features), e.g. X_train[:100]"
        )
    return rows, names


def _not_numbers(head: Any) -> list[str]:
    """The sample's columns that do not convert to float32: by name in a DataFrame, else by position."""
    if hasattr(head, "columns"):
        columns = [(str(name), head[name]) for name in head.columns]
    else:
        table = np.asarray(head, dtype=object)
        if table.ndim != 2:
            return []
        columns = [(f"column {j}", table[:, j]) for j in range(table.shape[1])]
    bad = []
    for name, values in columns:
        try:
            np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            bad.append(name)
    return bad
