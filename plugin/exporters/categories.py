"""A LightGBM model on pandas categories: the category -> code mapping it learned, as the ensemble's
preprocessing step, so that clients send category values, not codes.

LightGBM keeps each category column's training categories (`pandas_categorical`) and, at predict,
reads a value as its position in that list; a value not in it (or missing) is read as missing. The
step does the same in ONNX: one LabelEncoder per category column (value -> position, anything else
-> NaN), numeric columns cast to float32, all concatenated in the model's feature order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.plugin.exporters.base import Export, ExportError
from tritonflow.plugin.exporters.tabular import FEATURES, OPSET, preprocess_export

if TYPE_CHECKING:
    import pandas as pd

ML_OPSET = 2  # ai.onnx.ml: LabelEncoder with string keys and float values
_TENSOR_TYPES = {"BYTES": "STRING", "FP64": "DOUBLE", "FP32": "FLOAT", "INT64": "INT64", "INT32": "INT32"}


def category_step(model: Any, sample: pd.DataFrame, columns: list[tuple[str, str]]) -> Export | None:
    """The preprocessing step of a LightGBM model trained on pandas categories; None for a model
    without category features (it keeps today's path)."""
    import pandas as pd

    learned = _lightgbm_categories(model)
    if not learned:
        return None
    names = [name for name, _ in columns]
    features = list(_booster(model).feature_name())
    if names != features:
        raise ExportError(
            f"the sample's columns {names} are not the model's features in training order {features}: "
            "clients send the columns by name, so pass a sample with the training frame's columns (X_val)"
        )
    category_columns = [name for name in names if isinstance(sample[name].dtype, pd.CategoricalDtype)]
    if len(category_columns) != len(learned):
        raise ExportError(
            f"the model learned {len(learned)} category column(s), but the sample has "
            f"{len(category_columns)} ({category_columns}): pass a sample with the training frame's dtypes"
        )
    categories = {
        name: [str(v) for v in values] for name, values in zip(category_columns, learned, strict=True)
    }
    return preprocess_export(
        codes_onnx(columns, categories),
        columns,
        len(columns),
        {"class": "category codes", "categories": {name: len(v) for name, v in categories.items()}},
        {},
        lambda frame: _codes(frame, categories),
    )


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


def _booster(model: Any) -> Any:
    return getattr(model, "booster_", model)


def _lightgbm_categories(model: Any) -> list[list[Any]]:
    """The category lists a LightGBM model learned from pandas categories ([] for anything else)."""
    if not any(base.__module__.split(".")[0] == "lightgbm" for base in type(model).__mro__):
        return []
    return list(getattr(_booster(model), "pandas_categorical", None) or [])
