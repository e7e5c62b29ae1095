"""Tree ensembles -> a Treelite checkpoint served by Triton's FIL backend (`checkpoint.tl`).

Classifiers are configured with predict_proba "true", so FIL answers class probabilities,
(rows, n_classes), two columns for binary models too; regressors answer (rows, 1). Booleans are
written lowercase: FIL reads "True" as its default without a word.
"""

from __future__ import annotations

from typing import Any

from tritonflow.plugin.exporters.base import INPUT, OUTPUT, Export, Exporter, ExportError, brief
from tritonflow.plugin.exporters.native import NativeModel
from tritonflow.serving.model_config import FIL_MODEL_FILES, TensorSpec
from tritonflow.serving.triton_releases import classifier_key

MODEL_TYPE = "treelite_checkpoint"
MODEL_FILE = FIL_MODEL_FILES[MODEL_TYPE]  # the file FIL reads for that model_type
TREES = (
    "scikit-learn RandomForest, ExtraTrees, GradientBoosting and HistGradientBoosting (classifiers and "
    "regressors), XGBoost and LightGBM tree boosters; single-output only; a Pipeline only when every step "
    "before the model is 'passthrough'"
)


class TreeliteExporter(Exporter):
    format = "treelite"

    def can_export(self, model: Any) -> bool:
        return isinstance(model, NativeModel) and model.is_tree_ensemble

    def export(self, model: Any, n_features: int, triton_version: str) -> Export:
        import treelite

        if not self.can_export(model):
            raise ExportError(
                f"{type(model.model).__name__} cannot be exported to Treelite, which takes {TREES}: "
                'use format="onnx"'
            )
        try:
            checkpoint = model.to_treelite().serialize_bytes()
        except Exception as exc:  # the importers raise TreeliteError, ValueError (string categories), ...
            raise ExportError(
                f'Treelite cannot read this {type(model.model).__name__}: {brief(exc)}; try format="onnx"'
            ) from None
        classifier = "true" if model.is_classifier else "false"
        parameters = {
            "model_type": MODEL_TYPE,
            classifier_key(triton_version): classifier,
            "predict_proba": classifier,
        }
        if model.is_classifier:
            parameters["threshold"] = "0.5"  # unused with predict_proba, yet FIL wants it for classifiers
        return Export(
            format=self.format,
            backend="fil",
            files={MODEL_FILE: checkpoint},
            inputs=(TensorSpec(INPUT, "FP32", (n_features,)),),
            outputs=(TensorSpec(OUTPUT, "FP32", (model.width(n_features),)),),
            parameters=parameters,
            n_classes=model.n_classes,
            model_info=model.info(),
            versions={"treelite": treelite.__version__},
            native_predict=model.predict,
            batch_engine_file=lambda: model.batch_engine_file(n_features),
        )
