"""Model -> Triton files: the model's family says how to read it, the format how to write it.

Both tables are lazy ("name" -> "module.Class"), so a deploy imports only the libraries its model
needs; a new library is an adapter module beside native.py plus a line in FAMILIES, a new format a
file plus a line in EXPORTERS. format="auto" serves tree ensembles through Treelite and FIL, and
anything else through ONNX. A Pipeline whose steps before the model are all 'passthrough' is exported
as that model (its trees stay trees); one with real preprocessing is a whole graph, so ONNX.
"""

from __future__ import annotations

from typing import Any

from tritonflow.lineage.imports import load_object
from tritonflow.plugin.exporters.base import Export, Exporter, ExportError, library_errors
from tritonflow.plugin.exporters.tabular import EnsembleExport
from tritonflow.plugin.model_checks import check_trained
from tritonflow.serving.ensemble_config import Step
from tritonflow.serving.labels import line_break
from tritonflow.serving.model_config import ConfigSpec

# top-level package of the model's class -> its adapter (how it predicts, describes and converts itself)
FAMILIES = {
    "sklearn": "tritonflow.plugin.exporters.native_sklearn.SklearnModel",
    "xgboost": "tritonflow.plugin.exporters.native_xgboost.XGBoostModel",
    "lightgbm": "tritonflow.plugin.exporters.native_lightgbm.LightGBMModel",
}
# format -> exporter; "auto" takes the first that can export the model
EXPORTERS = {
    "treelite": "tritonflow.plugin.exporters.treelite.TreeliteExporter",
    "onnx": "tritonflow.plugin.exporters.onnx.OnnxExporter",
}


def export_model(model: Any, fmt: str, n_features: int, triton_version: str) -> Export:
    """Export `model` as `fmt` ("auto" | "treelite" | "onnx") for a Triton release; raise ExportError."""
    if fmt != "auto" and fmt not in EXPORTERS:
        raise ExportError(f"format {fmt!r} is not one of auto, {', '.join(EXPORTERS)}")
    check_trained(model)
    model = unwrap_pipeline(model)
    with library_errors(type(model).__name__, "exporting"):
        native = native_model(model)
        if fmt == "auto":
            # NOTE: in table order, imported only when reached: a tree ensemble never loads the ONNX exporter.
            fmt = next(name for name in EXPORTERS if _exporter(name).can_export(native))
        return _exporter(fmt).export(native, n_features, triton_version)


def config_spec(
    export: Export | EnsembleExport,
    name: str,
    max_batch_size: int = ConfigSpec.max_batch_size,
    instance_kind: str = ConfigSpec.instance_kind,
    max_queue_delay_us: int = ConfigSpec.max_queue_delay_us,
    steps: tuple[Step, ...] = (),
) -> ConfigSpec:
    """What config.pbtxt says for an export (an ensemble's: its `steps`); the deploy and the parity
    gate build it the same way. A classifier's classes label its output's columns (label_filename)."""
    return ConfigSpec(
        name=name,
        backend="" if steps else export.backend,
        inputs=export.inputs,
        outputs=export.outputs,
        max_batch_size=max_batch_size,
        instance_kind=instance_kind,
        max_queue_delay_us=max_queue_delay_us,
        parameters=dict(export.parameters),
        labels=_labels(export),
        steps=steps,
    )


def _labels(export: Export | EnsembleExport) -> tuple[str, ...]:
    """The classes, in column order, as a labels file writes them (str of each: 0/1 stay "0"/"1")."""
    labels = tuple(str(c) for c in export.model_info.get("classes", ())) if export.n_classes else ()
    bad = line_break(labels)
    if bad is not None:
        raise ExportError(
            f"class {bad!r} holds a line break, and Triton's labels file holds one class per line: "
            "train on classes without line breaks (e.g. map them to codes or names before fit)"
        )
    return labels


def native_model(model: Any) -> Any:
    """The model's adapter (plugin/exporters/native_*.py); ExportError for a library not in FAMILIES."""
    return load_object(FAMILIES[_family(model)])(model)


def _family(model: Any) -> str:
    """The library of the model's class or of its bases (a user's subclass of a forest is a forest)."""
    for base in type(model).__mro__:
        family = base.__module__.split(".")[0]
        if family in FAMILIES:
            return family
    cls = type(model)
    raise ExportError(
        f"cannot export a {cls.__module__}.{cls.__qualname__}: tritonflow exports models of "
        f"{', '.join(FAMILIES)} (tree ensembles through Treelite, any other estimator or Pipeline "
        "through ONNX)"
    )


def unwrap_pipeline(model: Any) -> Any:
    """A Pipeline that passes rows through untouched to its last step is that step; others stay."""
    while (
        type(model).__name__ == "Pipeline"
        and all(step in (None, "passthrough") for _, step in model.steps[:-1])
        and model.steps[-1][1] not in (None, "passthrough")
    ):
        model = model.steps[-1][1]
    return model


def _exporter(name: str) -> Exporter:
    exporter: Exporter = load_object(EXPORTERS[name])()
    return exporter


__all__ = [
    "EXPORTERS",
    "FAMILIES",
    "Export",
    "ExportError",
    "Exporter",
    "config_spec",
    "export_model",
    "native_model",
    "unwrap_pipeline",
]
