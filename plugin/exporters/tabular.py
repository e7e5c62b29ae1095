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

The `features` tensor between the steps has a variable width (dims [-1] in both step configs, a
symbolic dim in the ONNX graph): a retrain whose encoder learns one more category publishes step
versions one column wider under the same step configs (Triton keeps one config for all of a model's
versions), while each ensemble version pins the step versions that fit each other. The served
width of a version is its model's (the node checks requests against it), and the records keep it
(`model.features`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.plugin.exporters.base import (
    INPUT,
    OUTPUT,
    Export,
    ExportError,
    brief,
    library_errors,
    onnx_bytes,
)
from tritonflow.serving.ensemble_config import LATEST, Step
from tritonflow.serving.frames import column_datatype
from tritonflow.serving.model_config import TensorSpec

if TYPE_CHECKING:
    import pandas as pd

FEATURES = "features"  # the preprocessing step's output: the forest's input
OPSET = 17
PREPROCESS, FOREST = "preprocess", "forest"  # the step models are published as <name>.<step>
ANY_WIDTH = -1  # the dims of `features` in the step configs: step versions differ in width
WIDTH = "width"  # the symbolic dim of `features` in the ONNX graph (Triton's onnxruntime backend
# compares a config's output dims with the model's exactly: [-1] needs a symbolic dim there)
VARIABLE_WIDTH = frozenset({("output", FEATURES), ("input", INPUT)})  # (kind, tensor) of the steps


@dataclass(frozen=True)
class EnsembleExport:
    """A tabular pipeline as a Triton ensemble: its steps' exports, in the order they run, and the
    ensemble's own tensors (one input per column, the forest's output)."""

    steps: tuple[tuple[str, Export], ...]  # (PREPROCESS, onnx export), (FOREST, treelite export)
    columns: list[tuple[str, str]]  # (column, Triton datatype), the sample frame's order
    model_info: dict[str, Any]
    # The native pipeline's answer in the served output's terms, from a DataFrame.
    native_predict: Callable[[pd.DataFrame], np.ndarray] = field(repr=False)

    format = "ensemble"
    backend = "ensemble"
    parameters: dict[str, str] = field(default_factory=dict)  # an ensemble's config has none

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, datatype, (1,)) for name, datatype in self.columns)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.steps[-1][1].outputs

    @property
    def n_classes(self) -> int | None:
        return self.steps[-1][1].n_classes

    @property
    def versions(self) -> dict[str, str]:
        return {k: v for _, export in self.steps for k, v in export.versions.items()}

    def step_models(self, name: str) -> dict[str, str]:
        """Step -> the model it is published as."""
        return {step: f"{name}.{step}" for step, _ in self.steps}

    def schedule(self, name: str, versions: dict[str, int] | None = None) -> tuple[Step, ...]:
        """The ensemble's steps under `name`, each pinned to its version (LATEST when not given)."""
        models, versions = self.step_models(name), versions or {}
        columns = {column: column for column, _ in self.columns}
        return (
            Step(models[PREPROCESS], versions.get(PREPROCESS, LATEST), columns, {FEATURES: FEATURES}),
            Step(models[FOREST], versions.get(FOREST, LATEST), {INPUT: FEATURES}, {OUTPUT: OUTPUT}),
        )


def export_ensemble(model: Any, sample: pd.DataFrame, triton_version: str) -> EnsembleExport | None:
    """A two-step ensemble, with a DataFrame sample, for a Pipeline of preprocessing and a tree
    model, or for a LightGBM or XGBoost model on pandas categories (plugin/exporters/categories.py); None for
    anything else (it keeps today's path: one tensor in, the model whole)."""
    from tritonflow.plugin.exporters import native_model
    from tritonflow.plugin.exporters.categories import category_step
    from tritonflow.plugin.exporters.native import sklearn_api_predict

    if not hasattr(sample, "columns"):
        return None
    columns = columns_of(sample)
    split = split_pipeline(model)
    if split is None:
        step = category_step(model, sample, columns)
        if step is None:
            return None
        predict = native_model(model).predict
        native = lambda frame: predict(step.recode(frame))  # noqa: E731
        return _ensemble(step.export, model, native, {"categories": "native"}, columns, triton_version)
    preprocess, forest = split
    with library_errors(type(preprocess).__name__, "running the preprocessing of"):
        head = preprocess.transform(sample.head(1))
    # NOTE: XGBoost fed a sparse matrix reads the entries it leaves out as missing, not as zeros
    zeros_missing = hasattr(head, "toarray") and native_model(forest).library == "xgboost"
    import skl2onnx

    step = preprocess_export(
        preprocess_onnx(preprocess, columns, zeros_missing),
        columns,
        int(head.shape[1]),
        {"class": _class_name(preprocess), "steps": _steps(preprocess)},
        {"skl2onnx": skl2onnx.__version__},
        lambda frame: _dense(preprocess.transform(frame), zeros_missing),
    )
    is_classifier = native_model(forest).is_classifier
    native = lambda frame: sklearn_api_predict(model, frame, is_classifier)  # noqa: E731
    info = {"class": _class_name(model), "pipeline": _steps(model)}
    return _ensemble(step, forest, native, info, columns, triton_version)


def preprocess_export(
    onnx: bytes,
    columns: list[tuple[str, str]],
    width: int,
    info: dict[str, Any],
    versions: dict[str, str],
    native_predict: Callable[[pd.DataFrame], np.ndarray],
) -> Export:
    """The preprocessing step: an ONNX graph from one input per column to `features` (FP32, `width`
    wide, declared of any width: `ANY_WIDTH`, `WIDTH`)."""
    import onnx as onnx_module

    return Export(
        format="onnx",
        backend="onnxruntime",
        files={"model.onnx": _any_width(onnx)},
        inputs=tuple(TensorSpec(name, datatype, (1,)) for name, datatype in columns),
        outputs=(TensorSpec(FEATURES, "FP32", (ANY_WIDTH,)),),
        parameters={},
        n_classes=None,
        model_info={**info, "features": width},
        versions={"onnx": onnx_module.__version__, **versions},
        native_predict=native_predict,
    )


def _ensemble(
    preprocess: Export,
    forest: Any,
    native_predict: Callable[[pd.DataFrame], np.ndarray],
    info: dict[str, Any],
    columns: list[tuple[str, str]],
    triton_version: str,
) -> EnsembleExport:
    from tritonflow.plugin.exporters import export_model

    width = preprocess.model_info["features"]
    exported = export_model(forest, "treelite", width, triton_version)
    any_width = (TensorSpec(INPUT, "FP32", (ANY_WIDTH,)),)
    trees = replace(exported, inputs=any_width, model_info={**exported.model_info, "features": width})
    return EnsembleExport(
        steps=((PREPROCESS, preprocess), (FOREST, trees)),
        columns=columns,
        model_info={**trees.model_info, **info},
        native_predict=native_predict,
    )


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


def preprocess_onnx(preprocess: Any, columns: list[tuple[str, str]], zeros_missing: bool = False) -> bytes:
    """The fitted preprocessing as an ONNX model: one input per column, `features` (FP32) out;
    `zeros_missing`: zeros become NaN (what XGBoost makes of the entries a sparse matrix leaves out)."""
    from skl2onnx import convert_sklearn
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MaxAbsScaler, RobustScaler, StandardScaler

    # NOTE: "div": x / scale, as scikit-learn computes it; skl2onnx's default multiplies by 1 / scale,
    # an ulp off on float32 columns in 1 value of 4, enough to cross a split of a deep booster
    scalers = {cls: {"div": "div"} for cls in (StandardScaler, MaxAbsScaler, RobustScaler)}
    with library_errors(type(preprocess).__name__, "converting the preprocessing to ONNX"):
        initial_types = [(name, _tensor_type(name, datatype)) for name, datatype in columns]
        try:
            graph = convert_sklearn(
                preprocess,
                initial_types=initial_types,
                target_opset=OPSET,
                options=scalers,
                custom_conversion_functions={SimpleImputer: _imputer},
                custom_shape_calculators={SimpleImputer: _imputer_shape},
            )
        except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator
            raise ExportError(
                f"skl2onnx cannot convert the preprocessing {_steps(preprocess)}: {brief(exc)}; keep its "
                'steps to those skl2onnx converts, or pass format="onnx" to export the whole pipeline'
            ) from None
        return onnx_bytes(_cast_to_features(graph, zeros_missing), _class_name(preprocess))


def _tensor_type(name: str, datatype: str) -> Any:
    from skl2onnx.common import data_types as t

    types = {"BYTES": t.StringTensorType, "FP64": t.DoubleTensorType, "FP32": t.FloatTensorType}
    types |= {"INT64": t.Int64TensorType, "INT32": t.Int32TensorType, "BOOL": t.BooleanTensorType}
    if datatype not in types:
        raise ExportError(f"column {name!r} travels as {datatype}, which the preprocessing cannot take")
    return types[datatype]([None, 1])


def _cast_to_features(graph: Any, zeros_missing: bool) -> Any:
    """The graph with its one output cast to float32 and named FEATURES (zeros as NaN if asked)."""
    from onnx import TensorProto, helper, numpy_helper

    (output,) = graph.graph.output
    cast = f"{FEATURES}_dense" if zeros_missing else FEATURES
    graph.graph.node.append(helper.make_node("Cast", [output.name], [cast], to=TensorProto.FLOAT))
    if zeros_missing:
        for name, value in (("tritonflow_zero", 0.0), ("tritonflow_nan", np.nan)):
            graph.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        graph.graph.node.extend(
            [
                helper.make_node("Equal", [cast, "tritonflow_zero"], ["tritonflow_left_out"]),
                helper.make_node("Where", ["tritonflow_left_out", "tritonflow_nan", cast], [FEATURES]),
            ]
        )
    dims = [d.dim_value or d.dim_param or None for d in output.type.tensor_type.shape.dim]
    del graph.graph.output[:]
    graph.graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, dims))
    return graph


def _any_width(onnx: bytes) -> bytes:
    """The graph with its `features` output of a symbolic width (`WIDTH`), as ONNX Runtime reports it:
    a width the graph fixes would be inferred again over a declared symbol, so the output goes
    through a Reshape to its own runtime Shape, which keeps the symbol."""
    from onnx import helper, load_from_string

    graph = load_from_string(onnx)
    fixed, shape = "tritonflow_features_fixed", "tritonflow_features_shape"
    for node in graph.graph.node:
        node.input[:] = [fixed if name == FEATURES else name for name in node.input]
        node.output[:] = [fixed if name == FEATURES else name for name in node.output]
    graph.graph.node.extend(
        [helper.make_node("Shape", [fixed], [shape]), helper.make_node("Reshape", [fixed, shape], [FEATURES])]
    )
    (output,) = (o for o in graph.graph.output if o.name == FEATURES)
    output.type.tensor_type.shape.dim[-1].dim_param = WIDTH  # NOTE: clears its dim_value (a oneof)
    return graph.SerializeToString()


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


def _dense(features: Any, zeros_missing: bool) -> np.ndarray:
    """Features as the forest reads them: float32, dense (a ColumnTransformer may answer sparse)."""
    dense = np.asarray(features.toarray() if hasattr(features, "toarray") else features, dtype=np.float32)
    return np.where(dense == 0, np.float32(np.nan), dense) if zeros_missing else dense


def _class_name(model: Any) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"
