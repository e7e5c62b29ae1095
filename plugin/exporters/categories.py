"""A LightGBM or XGBoost model on pandas categories: the category -> code mapping it learned, as the
ensemble's preprocessing step, so that clients send category values, not codes.

Both libraries keep each category column's training categories (LightGBM's `pandas_categorical`,
XGBoost >= 3.1's `get_categories()`) and read a value as its position in that list. The step does the
same in ONNX: one LabelEncoder per category column (value -> position), numeric columns cast to
float32, all concatenated in the model's feature order. A value not in the list, or missing, becomes
NaN, which the trees send down each split's learned default branch. That is LightGBM's own reading.
XGBoost 3.2's DataFrame path differs, and the difference is a defect: it raises for a value sorting
after every training category and silently reads any other unseen value as the next training category
in sort order. So the native answer the parity gate compares with (`native_predict`) is XGBoost's on
the frame recoded to the training categories, unseen values missing, which is what XGBoost does with a
code it never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.plugin.exporters.base import Export, ExportError
from tritonflow.plugin.exporters.tabular import FEATURES, OPSET, preprocess_export

if TYPE_CHECKING:
    import pandas as pd

ML_OPSET = 2  # ai.onnx.ml: LabelEncoder with string keys and float values
_TENSOR_TYPES = {"BYTES": "STRING", "FP64": "DOUBLE", "FP32": "FLOAT", "INT64": "INT64", "INT32": "INT32"}


@dataclass(frozen=True)
class CategoryStep:
    export: Export
    categories: dict[str, list[Any]]  # category column -> its training categories, in code order

    def recode(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with its category columns in the training categories (any other value missing)."""
        import pandas as pd

        recoded = frame.copy()
        for name, values in self.categories.items():
            recoded[name] = pd.Categorical(frame[name].astype(object), categories=values)
        return recoded


def category_step(model: Any, sample: pd.DataFrame, columns: list[tuple[str, str]]) -> CategoryStep | None:
    """The preprocessing step of a LightGBM or XGBoost model trained on pandas categories; None for
    a model without category features (it keeps today's path)."""
    import pandas as pd

    names = [name for name, _ in columns]
    in_sample = [name for name in names if isinstance(sample[name].dtype, pd.CategoricalDtype)]
    learned = learned_categories(model, in_sample)
    if not learned:
        return None
    features = _feature_names(model)
    if names != features:
        raise ExportError(
            f"the sample's columns {names} are not the model's features in training order {features}: "
            "clients send the columns by name, so pass a sample with the training frame's columns (X_val)"
        )
    if in_sample != list(learned):
        raise ExportError(
            f"the model learned the category column(s) {list(learned)}, but the sample's category "
            f"columns are {in_sample}: pass a sample with the training frame's dtypes"
        )
    keys = {name: [str(v) for v in values] for name, values in learned.items()}  # what clients send
    export = preprocess_export(
        codes_onnx(columns, keys),
        columns,
        len(columns),
        {"class": "category codes", "categories": {name: len(v) for name, v in keys.items()}},
        {},
        lambda frame: _codes(frame, keys),
    )
    return CategoryStep(export, learned)


def learned_categories(model: Any, in_sample: list[str]) -> dict[str, list[Any]]:
    """Category column -> the values a LightGBM or XGBoost model trained on for it, in code order
    ({} for any other model, or one trained without categories). `in_sample`: the sample's category
    columns, in order (LightGBM keeps the values of its category columns in that order, not their names)."""
    from tritonflow.plugin.exporters import native_model

    library = _library(model)
    if library == "xgboost":
        return native_model(model).categories
    if library != "lightgbm":
        return {}
    learned = list(getattr(_booster(model), "pandas_categorical", None) or [])
    if learned and len(learned) != len(in_sample):
        raise ExportError(
            f"the model learned {len(learned)} category column(s), but the sample has "
            f"{len(in_sample)} ({in_sample}): pass a sample with the training frame's dtypes"
        )
    return dict(zip(in_sample, learned, strict=True))


def codes_onnx(columns: list[tuple[str, str]], categories: dict[str, list[str]]) -> bytes:
    """One input per column; `features` (FP32): category columns as codes (NaN when unknown), the
    rest cast, in column order."""
    from onnx import TensorProto, checker, helper

    inputs, nodes, parts = [], [], []
    for name, datatype in columns:
        if datatype not in _TENSOR_TYPES:
            raise ExportError(f"column {name!r} travels as {datatype}, which the category step cannot take")
        kind = getattr(TensorProto, _TENSOR_TYPES[datatype])
        inputs.append(helper.make_tensor_value_info(name, kind, [None, 1]))
        part = f"{name}__code"
        if name in categories:
            if datatype != "BYTES":
                raise ExportError(f"category column {name!r} must travel as strings (BYTES), not {datatype}")
            nodes.append(
                helper.make_node(
                    "LabelEncoder",
                    [name],
                    [part],
                    domain="ai.onnx.ml",
                    keys_strings=categories[name],
                    values_floats=[float(i) for i in range(len(categories[name]))],
                    default_float=float("nan"),
                )
            )
        else:
            nodes.append(helper.make_node("Cast", [name], [part], to=TensorProto.FLOAT))
        parts.append(part)
    nodes.append(helper.make_node("Concat", parts, [FEATURES], axis=1))
    output = helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [None, len(columns)])
    graph = helper.make_graph(nodes, "category_codes", inputs, [output])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="tritonflow",
    )
    checker.check_model(model)
    return model.SerializeToString()


def _codes(frame: pd.DataFrame, categories: dict[str, list[str]]) -> np.ndarray:
    """What the step computes, in numpy: the features LightGBM reads from the frame."""
    import pandas as pd

    out = np.empty((len(frame), len(frame.columns)), dtype=np.float32)
    for j, name in enumerate(frame.columns):
        if name in categories:
            codes = pd.Categorical(frame[name].astype(str), categories=categories[name]).codes
            out[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            out[:, j] = frame[name].to_numpy(np.float32)
    return out


def _library(model: Any) -> str | None:
    for base in type(model).__mro__:
        if base.__module__.split(".")[0] in ("lightgbm", "xgboost"):
            return base.__module__.split(".")[0]
    return None


def _booster(model: Any) -> Any:
    """A scikit-learn wrapper's Booster (LightGBM's booster_, XGBoost's get_booster()), else the model."""
    if hasattr(model, "booster_"):
        return model.booster_
    return model.get_booster() if hasattr(model, "get_booster") else model


def _feature_names(model: Any) -> list[str]:
    booster = _booster(model)
    return list(booster.feature_name() if _library(model) == "lightgbm" else booster.feature_names or [])
