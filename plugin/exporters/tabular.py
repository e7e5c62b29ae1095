"""A scikit-learn Pipeline of preprocessing and a tree model, split for a Triton ensemble: the
preprocessing as ONNX with one input per DataFrame column, the model as a Treelite checkpoint.

The preprocessing step takes each column as a [rows, 1] tensor of its own type (strings as BYTES,
float64 as FP64: serving/frames.py) and answers `features`, the FP32 matrix the forest reads. It
computes in the columns' own precision, as scikit-learn does, and casts to float32 only at the end,
where XGBoost, LightGBM and scikit-learn's trees cast their input too: so the trees see the very
features they see natively (bit for bit on the pipelines tested), and the ensemble's answers equal
the native pipeline's to float32 rounding. A float32 preprocessing would not: one ulp of a scaled
value crosses a split now and then (3.7e-5 on a probability, 1 row in 200, with 50 XGBoost trees).
ONNX Runtime's Imputer has no double kernel, so SimpleImputer is written as IsNaN/Where instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.plugin.exporters.base import ExportError, brief, library_errors
from tritonflow.serving.frames import column_datatype

if TYPE_CHECKING:
    import pandas as pd

FEATURES = "features"  # the preprocessing step's output: the forest's input
OPSET = 17


def split_pipeline(model: Any) -> tuple[Any, Any] | None:
    """(preprocessing Pipeline, tree model) when `model` is a Pipeline whose last step is a tree
    ensemble and whose steps before it transform; None for anything else (kept on today's path)."""
    from sklearn.pipeline import Pipeline

    from tritonflow.plugin.exporters import native_model

    if type(model).__name__ != "Pipeline" or len(model.steps) < 2:
        return None
    last = model.steps[-1][1]
    if all(step in (None, "passthrough") for _, step in model.steps[:-1]) or last in (None, "passthrough"):
        return None
    try:
        if not native_model(last).is_tree_ensemble:
            return None
    except ExportError:  # a library tritonflow does not export
        return None
    return Pipeline(model.steps[:-1]), last


def columns_of(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(column name, Triton datatype) per column of the sample frame, in its order."""
    return [(str(name), column_datatype(frame[name])) for name in frame.columns]


def preprocess_onnx(preprocess: Any, columns: list[tuple[str, str]]) -> bytes:
    """The fitted preprocessing as an ONNX model: one input per column, `features` (FP32) out."""
    from skl2onnx import convert_sklearn
    from sklearn.impute import SimpleImputer

    with library_errors(type(preprocess).__name__, "converting the preprocessing to ONNX"):
        initial_types = [(name, _tensor_type(name, datatype)) for name, datatype in columns]
        try:
            graph = convert_sklearn(
                preprocess,
                initial_types=initial_types,
                target_opset=OPSET,
                custom_conversion_functions={SimpleImputer: _imputer},
                custom_shape_calculators={SimpleImputer: _imputer_shape},
            )
        except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator
            raise ExportError(
                f"skl2onnx cannot convert the preprocessing {_steps(preprocess)}: {brief(exc)}; keep its "
                'steps to those skl2onnx converts, or pass format="onnx" to export the whole pipeline'
            ) from None
        return _cast_to_features(graph).SerializeToString()


def _tensor_type(name: str, datatype: str) -> Any:
    from skl2onnx.common import data_types as t

    types = {"BYTES": t.StringTensorType, "FP64": t.DoubleTensorType, "FP32": t.FloatTensorType}
    types |= {"INT64": t.Int64TensorType, "INT32": t.Int32TensorType, "BOOL": t.BooleanTensorType}
    if datatype not in types:
        raise ExportError(f"column {name!r} travels as {datatype}, which the preprocessing cannot take")
    return types[datatype]([None, 1])


def _cast_to_features(graph: Any) -> Any:
    """The graph with its one output cast to float32 and named FEATURES."""
    from onnx import TensorProto, helper

    (output,) = graph.graph.output
    graph.graph.node.append(helper.make_node("Cast", [output.name], [FEATURES], to=TensorProto.FLOAT))
    dims = [d.dim_value or d.dim_param or None for d in output.type.tensor_type.shape.dim]
    del graph.graph.output[:]
    graph.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, dims))
    return graph


def _imputer_shape(operator: Any) -> None:
    width = operator.raw_operator.statistics_.size
    operator.outputs[0].type = operator.inputs[0].type.__class__([None, width])


def _imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer on numbers as IsNaN/Where, in the input's own precision."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    imputer = operator.raw_operator
    source = operator.inputs[0]
    if not isinstance(source.type, (DoubleTensorType, FloatTensorType)):
        raise ExportError(f"SimpleImputer takes float columns here, not {type(source.type).__name__}")
    if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
        raise ExportError(f"SimpleImputer(missing_values={imputer.missing_values!r}): only NaN is converted")
    double = isinstance(source.type, DoubleTensorType)
    fill = scope.get_unique_variable_name("fill")
    values = imputer.statistics_.astype(np.float64 if double else np.float32)
    kind = TensorProto.DOUBLE if double else TensorProto.FLOAT
    container.add_initializer(fill, kind, [values.size], values)
    mask = scope.get_unique_variable_name("missing")
    container.add_node("IsNaN", [source.full_name], [mask], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where",
        [mask, fill, source.full_name],
        [operator.outputs[0].full_name],
        name=scope.get_unique_operator_name("Where"),
    )


def _steps(pipeline: Any) -> str:
    return "(" + ", ".join(f"{name}: {type(step).__name__}" for name, step in pipeline.steps) + ")"
