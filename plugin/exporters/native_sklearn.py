"""scikit-learn's adapter: estimators and Pipelines, through Treelite (its forests) or skl2onnx.

A module of its own, as each library's adapter is (native.py keeps the base and what they share):
`native_model` imports it only for a scikit-learn model. A Pipeline ending in an XGBoost or LightGBM
model is converted here too, with that library's onnxmltools converter registered with skl2onnx.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import INPUT, ExportError
from tritonflow.plugin.exporters.native import ONNX_OPSET, NativeModel, json_safe, sklearn_api_predict
from tritonflow.plugin.exporters.sklearn_missing import route_missing_in_onnx, route_missing_in_treelite


class SklearnModel(NativeModel):
    library = "scikit-learn"
    onnx_converter = "skl2onnx"

    def _task(self) -> tuple[bool, int | None]:
        from sklearn.base import is_classifier, is_regressor

        name = type(self.model).__name__
        if is_classifier(self.model):
            if getattr(self.model, "n_outputs_", 1) > 1:
                raise ExportError(f"{name} is a multi-output classifier: serve one classifier per target")
            if not hasattr(self.model, "predict_proba"):
                raise ExportError(
                    f"{name} has no predict_proba, and served classifiers answer class probabilities: "
                    "enable it (e.g. SVC(probability=True)) or wrap it in CalibratedClassifierCV"
                )
            return True, len(self.model.classes_)
        if is_regressor(self.model):
            return False, None
        raise ExportError(
            f"{name} is neither a classifier nor a regressor: tritonflow serves class probabilities "
            "or predicted values (put transformers in a Pipeline in front of the model)"
        )

    @property
    def is_tree_ensemble(self) -> bool:
        from sklearn import ensemble

        trees = (  # subclasses too: what they change is the parity gate's to catch
            ensemble.RandomForestClassifier,
            ensemble.RandomForestRegressor,
            ensemble.ExtraTreesClassifier,
            ensemble.ExtraTreesRegressor,
            ensemble.GradientBoostingClassifier,
            ensemble.GradientBoostingRegressor,
            ensemble.HistGradientBoostingClassifier,
            ensemble.HistGradientBoostingRegressor,
        )
        return isinstance(self.model, trees) and getattr(self.model, "n_outputs_", 1) == 1

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return sklearn_api_predict(self.model, rows, self.is_classifier)

    def hyperparameters(self) -> dict[str, Any]:
        return json_safe(self.model.get_params(deep=True))

    def to_treelite(self) -> Any:
        import treelite.sklearn

        checkpoint = treelite.sklearn.import_model(self.model)
        route_missing_in_treelite(checkpoint, self.model)
        return checkpoint

    def to_onnx(self, n_features: int) -> Any:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        steps = [self.model, *self.model.get_params(deep=True).values()]
        for library in {type(s).__module__.split(".")[0] for s in steps} & {"xgboost", "lightgbm"}:
            _register_boosters_with_skl2onnx(library)
        final = self.model
        while hasattr(final, "steps"):  # the ZipMap option belongs to the pipeline's last estimator
            final = final.steps[-1][1]
        graph = convert_sklearn(
            self.model,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            options={id(final): {"zipmap": False}} if self.is_classifier else None,
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
        route_missing_in_onnx(graph, self.model)
        return graph


@functools.cache
def _register_boosters_with_skl2onnx(library: str) -> None:
    """Teach skl2onnx a library's wrappers (onnxmltools' converters) for pipelines ending in one.

    Per library: a pipeline ending in an XGBoost model must not need lightgbm installed, or back.
    """
    from skl2onnx import update_registered_converter
    from skl2onnx.common import shape_calculator

    if library == "xgboost":
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost as convert

        classifier, regressor, prefix = xgboost.XGBClassifier, xgboost.XGBRegressor, "XGBoostXGB"
    else:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm as convert

        classifier, regressor, prefix = lightgbm.LGBMClassifier, lightgbm.LGBMRegressor, "LightGbmLGBM"
    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    shapes = shape_calculator.calculate_linear_classifier_output_shapes
    update_registered_converter(classifier, f"{prefix}Classifier", shapes, convert, options=options)
    shapes = shape_calculator.calculate_linear_regressor_output_shapes
    update_registered_converter(regressor, f"{prefix}Regressor", shapes, convert, options=None)
